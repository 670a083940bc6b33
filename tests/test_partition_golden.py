"""The partition spec of every parameter of SD 2 base (UNet, VAE, OpenCLIP ViT-H text and vision
towers, grounding net, CLS projector) on a data 2 x fsdp 4 mesh, against a reviewed golden file.

Abstract shapes only (`nnx.eval_shape`): no weights are made. A change of a sharding rule, of a
layer's logical axes or of the model layout shows here as a diff of named parameters.
Regenerate after a deliberate change with `SDJAX_UPDATE_GOLDEN=1 python -m pytest <this file>`
and review the diff.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax
import pytest
from flax import nnx

from configs import sd2_base
from sdjax import sharding
from sdjax.models.subject_diffusion import build_subject_diffusion
from sdjax.models.tracing import fast_tracing

GOLDEN = Path(__file__).parent / "golden" / "sd2_base_partition_specs.json"
MESH = {"data": 2, "fsdp": 4}
# Parameters too small or too oddly shaped for fsdp 4 stay replicated; they are a sliver.
MAX_REPLICATED_FRACTION = 0.01


@pytest.fixture(scope="module")
def layout() -> dict[str, dict]:
    config = sd2_base.get_config().model
    with fast_tracing():
        model = nnx.eval_shape(lambda: build_subject_diffusion(config, nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    mesh = sharding.make_mesh(MESH)
    shardings = sharding.state_shardings(state, mesh)
    flat_shardings = dict(nnx.to_flat_state(shardings))
    return {
        "/".join(str(p) for p in path): {
            "shape": list(var.get_value().shape),
            "spec": list(flat_shardings[path].spec)
            + [None] * (var.get_value().ndim - len(flat_shardings[path].spec)),
        }
        for path, var in nnx.to_flat_state(state)
    }


def test_every_sd2_base_parameter_has_its_golden_spec(layout):
    if os.environ.get("SDJAX_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        lines = (f"{json.dumps(k)}: {json.dumps(layout[k])}" for k in sorted(layout))
        GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one parameter a line
    golden = json.loads(GOLDEN.read_text())
    assert sorted(set(layout) - set(golden)) == []  # new parameters
    assert sorted(set(golden) - set(layout)) == []  # parameters gone
    changed = {k: (golden[k], layout[k]) for k in golden if golden[k] != layout[k]}
    assert changed == {}


def test_fsdp_holds_almost_every_byte(layout):
    """Per device, a quarter of the weights plus the few replicated ones."""
    total = sum(math.prod(v["shape"]) for v in layout.values())
    replicated = sum(
        math.prod(v["shape"]) for v in layout.values() if all(s is None for s in v["spec"])
    )
    assert replicated <= MAX_REPLICATED_FRACTION * total, (replicated, total)
    assert all(v["spec"].count("fsdp") <= 1 and "data" not in v["spec"] for v in layout.values())
    assert jax.device_count() == math.prod(MESH.values())
