"""Device mesh and logical-axis sharding rules (MaxText style: layout is configuration).

Parameters carry logical axis names (see `sdjax.models.layers`). A rule table maps each logical
name to a mesh axis; a dimension is sharded only when the mesh axis divides it and the mesh axis is
not already used by an earlier dimension of the same array, otherwise it is replicated.
The mesh uses automatic (not explicit) axis types: shardings are given to `jax.jit`, not to types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, str | None]]

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")
FSDP_RULES: Rules = (
    ("embed", "fsdp"),
    ("mlp", "fsdp"),
    ("heads", "fsdp"),
    ("conv_in", "fsdp"),
    ("conv_out", "fsdp"),
    ("vocab", "fsdp"),
    ("norm", None),
)


def mesh_shape(requested: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolves one -1 entry to the remaining devices and checks the product."""
    shape = dict(requested)
    unknown = [k for k, v in shape.items() if v == -1]
    if len(unknown) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {shape}")
    known = math.prod(v for v in shape.values() if v != -1)
    if unknown:
        if num_devices % known:
            raise ValueError(f"mesh {shape} does not divide {num_devices} devices")
        shape[unknown[0]] = num_devices // known
    if math.prod(shape.values()) != num_devices:
        raise ValueError(
            f"mesh {shape} needs {math.prod(shape.values())} devices, have {num_devices}"
        )
    return shape


def make_mesh(requested: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with the axes and sizes of `requested` (-1 = the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(requested, len(devices))
    axis_types = (jax.sharding.AxisType.Auto,) * len(shape)
    return jax.make_mesh(
        tuple(shape.values()), tuple(shape), axis_types=axis_types, devices=devices
    )


def logical_to_spec(
    logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules
) -> PartitionSpec:
    """The partition spec of an array with logical axes `logical` and `shape` on `mesh`."""
    table = dict(rules)
    used: set[str] = set()
    spec: list[str | None] = []
    for name, size in zip(logical, shape, strict=True):
        axis = table.get(name) if name is not None else None
        if axis is None or axis in used or axis not in mesh.shape or size % mesh.shape[axis]:
            spec.append(None)
            continue
        used.add(axis)
        spec.append(axis)
    return PartitionSpec(*spec)


def _sharding_of(variable, mesh: Mesh, rules: Rules) -> NamedSharding:
    logical = variable.get_metadata().get("out_sharding")
    shape = np.shape(variable.get_value())
    if not logical:
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, logical_to_spec(logical, shape, mesh, rules))


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules = FSDP_RULES):
    """NamedShardings for every variable of an NNX state (abstract or concrete), from its metadata."""
    return jax.tree.map(
        lambda v: _sharding_of(v, mesh, rules),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def batch_sharding(mesh: Mesh, axes: Sequence[str] = BATCH_AXES) -> NamedSharding:
    """Leading (batch) dimension split over the mesh's data-parallel axes."""
    present = tuple(a for a in axes if a in mesh.shape)
    return NamedSharding(mesh, PartitionSpec(present))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated over the mesh."""
    return NamedSharding(mesh, PartitionSpec())
