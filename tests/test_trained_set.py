"""After one training step, exactly SPEC's trainable parameters have changed (SPEC §1 "trained?"
column, and the `full_unet` / `image_encoder_layers` options); the VAE and the frozen image
encoder are bit for bit what they were."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data.build_sample import build_sample_records
from sdjax import sharding, trainer
from sdjax.input_pipeline import pipeline
from sdjax.training import trainable
from tests.training_config import micro_config

IMAGE_ENCODER_LAYERS = 3  # enough that a 2-block tail leaves a frozen block
OPEN_GATE = 0.5  # gates opened before the step: closed gates pass no gradient to the adapters


def spec_trainable(path: tuple[str, ...], full_unet: bool, encoder_tail: int) -> bool:
    """SPEC §1: UNet `conv_in`, every cross-attention `to_k`/`to_v`, all adapter parameters (the
    gated adapters, the grounding net), the CLS projector and the whole text encoder; options:
    the whole UNet, the image encoder's last `encoder_tail` blocks with its head."""
    part, rest = path[0], path[1:]
    if part in ("text_encoder", "grounding", "cls_projector"):
        return True
    if part == "unet":
        cross_kv = any(
            a == "attn2" and b in ("to_k", "to_v") for a, b in zip(rest, rest[1:], strict=False)
        )
        return full_unet or rest[0] == "conv_in" or "fuser" in rest or cross_kv
    if part == "image_encoder" and encoder_tail:
        if "post_layernorm" in rest or "visual_projection" in rest:
            return True
        if "layers" in rest:
            return int(rest[rest.index("layers") + 1]) >= IMAGE_ENCODER_LAYERS - encoder_tail
    return False


def _flat(state: nnx.State) -> dict[tuple[str, ...], np.ndarray]:
    return {
        tuple(str(p) for p in path): np.asarray(jax.device_get(v.get_value()))
        for path, v in nnx.to_flat_state(state)
    }


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    c = micro_config(",".join(build_sample_records(tmp_path_factory.mktemp("sample"))))
    c.model.image_encoder.num_hidden_layers = IMAGE_ENCODER_LAYERS
    c.optimizer.warmup_steps = 0
    return c


@pytest.fixture(scope="module")
def batch(config):
    batch = dict(next(pipeline.make_iterator(config.data)))
    batch["subject_valid"] = batch["subject_valid"].copy()
    batch["subject_valid"][0, 1:] = False  # an empty slot: the null features take part
    for flag in ("drop_text", "drop_mask", "drop_subjects"):
        batch[flag] = np.zeros_like(batch[flag])
    return batch


@pytest.mark.parametrize(
    "full_unet, encoder_tail", [(False, 0), (True, 2)], ids=["spec", "full_unet+encoder_tail"]
)
def test_one_step_changes_exactly_the_trainable_set(config, batch, full_unet, encoder_tail):
    run_config = config.copy_and_resolve_references()
    run_config.train.update(dict(full_unet=full_unet, image_encoder_layers=encoder_tail))
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    model = trainer.init_model(run_config, mesh)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if str(path[-1]) in ("alpha_attn", "alpha_dense"):
            var.set_value(jnp.full_like(var.get_value(), OPEN_GATE))
    before = _flat(nnx.state(model, nnx.Param))

    run = trainer.build_run(run_config, mesh, model)
    expected_counts: dict[str, list[int]] = {}
    for path, value in before.items():
        column = 0 if spec_trainable(path, full_unet, encoder_tail) else 1
        expected_counts.setdefault(path[0], [0, 0])[column] += value.size
    counts = trainable.parameter_counts(run.state.params, run.frozen)
    assert counts == {part: tuple(n) for part, n in expected_counts.items()}
    assert "trained" in trainable.parameter_overview(counts).splitlines()[0]
    state, metrics = run.step_fn(
        run.state, run.frozen, trainer.global_batch(batch, sharding.batch_sharding(mesh))
    )
    assert np.isfinite(float(metrics["loss"])) and int(state.skipped) == 0
    after = _flat(nnx.state(nnx.merge(run.graphdef, state.params, run.frozen), nnx.Param))

    assert after.keys() == before.keys()
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    expected = {p for p in before if spec_trainable(p, full_unet, encoder_tail)}
    assert {"/".join(p) for p in changed ^ expected} == set()
    frozen_parts = {"vae"} | ({"image_encoder"} if not encoder_tail else set())
    for path in before:
        if path[0] in frozen_parts:
            assert before[path].tobytes() == after[path].tobytes(), path
    assert any(p[0] == "image_encoder" for p in changed) == bool(encoder_tail)
    assert any(p[0] == "unet" and p[1] == "conv_out" for p in changed) == full_unet


def test_a_run_to_restore_draws_only_the_frozen_set(config):
    """`build_run(restoring=True)`, as a resume builds it: the trainable parameters and their
    optimizer state are shape structs with their shardings (the checkpoint fills them), the
    frozen ones hold the values a full initialisation draws."""
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    full = trainer.build_run(config, mesh)
    restoring = trainer.build_run(config, mesh, restoring=True)
    abstract = jax.tree.leaves(restoring.state)
    assert abstract and all(isinstance(x, jax.ShapeDtypeStruct) for x in abstract)
    assert trainer.signature_differences(full.state, restoring.state) == []
    trained = _flat(nnx.state(nnx.merge(full.graphdef, full.state.params, full.frozen), nnx.Param))
    frozen = _flat(restoring.frozen)
    assert frozen.keys() == {p for p in trained if not spec_trainable(p, False, 0)}
    for path, value in frozen.items():
        assert value.tobytes() == trained[path].tobytes(), path
