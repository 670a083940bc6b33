"""Ahead-of-time compilation of the training step for a TPU slice, on a host without TPUs.

`jax.experimental.topologies` describes the slice's chips (the compiler comes from `libtpu`, the
`tpu` extra); `trainer.abstract_run` gives the step over shape-only state, so even an SD 2 base
run for hundreds of chips is lowered and compiled here without allocating a parameter.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import time
from collections.abc import Mapping
from typing import Any

import jax
from jax.experimental import topologies
from ml_collections import ConfigDict

from sdjax import sharding, trainer
from sdjax.models.attention import backend_attention

GIB = 2**30
# High-bandwidth memory per chip, by `device.device_kind`.
HBM_BYTES = {
    "TPU v4": 32 * GIB,
    "TPU v5 lite": 16 * GIB,  # v5e
    "TPU v5": 95 * GIB,  # v5p
    "TPU v6 lite": 32 * GIB,  # v6e (Trillium)
}


def libtpu_available() -> bool:
    """Whether the TPU compiler (`pip install sdjax[tpu]`) is installed."""
    return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: str) -> list[jax.Device]:
    """The chips of a TPU slice named like `v5e:2x2` or `v5p:4x4x8` (no TPU needed)."""
    if not libtpu_available():
        raise RuntimeError(
            f"compiling for TPU topology {topology!r} needs libtpu: pip install 'sdjax[tpu]'"
        )
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)


@dataclasses.dataclass(frozen=True)
class StepReport:
    """Per-device memory and cost of the compiled step on one slice."""

    topology: str
    device_kind: str
    num_devices: int
    mesh: dict[str, int]
    batch_size: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written in place of donated arguments
    temp_bytes: int
    flops: float  # of one device's partitioned program
    lower_seconds: float
    compile_seconds: float

    @property
    def peak_bytes(self) -> int:
        """Arguments, temporaries and the outputs that do not reuse a donated buffer."""
        return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

    @property
    def hbm_bytes(self) -> int | None:
        return HBM_BYTES.get(self.device_kind)

    @property
    def fits(self) -> bool | None:
        """Whether the step fits the chip's memory (None for an unknown chip)."""
        return None if self.hbm_bytes is None else self.peak_bytes <= self.hbm_bytes


def compile_step(
    config: ConfigDict, topology: str, compiler_options: Mapping[str, Any] | None = None
) -> tuple[jax.stages.Compiled, StepReport]:
    """Compiles the training step of `config` for every chip of `topology` on `config.mesh`;
    `model.attention` `auto` is what it stands for on the slice's chips, not on this host."""
    devices = topology_devices(topology)
    if config.model.get("attention", "auto") == "auto":
        config = copy.deepcopy(config)
        config.model.attention = backend_attention(devices[0].platform)
    requested = config.mesh.to_dict()
    num_devices = requested.pop("num_devices")
    if num_devices not in (-1, len(devices)):
        raise ValueError(
            f"mesh.num_devices={num_devices}, but topology {topology!r} has {len(devices)} chips"
        )
    mesh = sharding.make_mesh(requested, devices)
    run = trainer.abstract_run(config, mesh)

    start = time.perf_counter()
    lowered = run.step_fn.lower(run.state, run.frozen, trainer.abstract_batch(config.data, mesh))
    lowered_at = time.perf_counter()
    compiled = lowered.compile(dict(compiler_options) if compiler_options else None)
    compiled_at = time.perf_counter()

    memory = compiled.memory_analysis()
    report = StepReport(
        topology=topology,
        device_kind=devices[0].device_kind,
        num_devices=len(devices),
        mesh=dict(mesh.shape),
        batch_size=config.data.batch_size,
        argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        flops=float(compiled.cost_analysis().get("flops", 0.0)),
        lower_seconds=lowered_at - start,
        compile_seconds=compiled_at - lowered_at,
    )
    return compiled, report
