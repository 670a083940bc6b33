"""The training objective, re-derived in NumPy from SPEC §1 "Attention-map control loss" and
"Objective" and §2 classifier-free dropout, outside `sdjax/training/step.py`.

The model parts run as sdjax runs them (their parity with diffusers/transformers is tested
elsewhere); everything the step builds from them — the dropped-text prompt, the zeroed location
mask, the dropped subjects, the noised input, the target, the losses and their weighting — is
written here again from SPEC and compared with `subject_diffusion_loss`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data.build_sample import build_sample_records
from sdjax import schedulers, sharding, trainer
from sdjax.input_pipeline import pipeline
from sdjax.models.subject_diffusion import adapters_of
from sdjax.training.step import subject_diffusion_loss
from tests.training_config import micro_config

TOLERANCE = 1e-5  # float32: the same network evaluated in two separately compiled programs
KEY = 7  # the step's key: it draws (latent sample, noise, timesteps) from split(key, 3)
LOGVAR_FIXED = -80.0  # clamped to -30: std e^-15, the latent sample is its mean (to 1e-7)

# SPEC §1 "Objective": DDPM, 1000 steps, scaled_linear betas 0.00085 → 0.012, epsilon target.
NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012
LAMBDA_ATTN = 0.01
DENOMINATOR_EPS = 1e-5  # the reference's balanced L1 adds it to both region sizes


# --------------------------------------------------------------------- the NumPy reference


def alphas_cumprod() -> np.ndarray:
    betas = np.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def noised(x0: np.ndarray, noise: np.ndarray, t: np.ndarray) -> np.ndarray:
    a = alphas_cumprod()[t].reshape(-1, 1, 1, 1)
    return (np.sqrt(a) * x0 + np.sqrt(1.0 - a) * noise).astype(np.float32)


def diffusion_term(eps_hat: np.ndarray, eps: np.ndarray, subject_weight: np.ndarray | None):
    """MSE over every latent element; with `subject_weight` (B, h, w, 1) the weighted mean."""
    err = (eps_hat.astype(np.float64) - eps) ** 2
    if subject_weight is None:
        return err.mean()
    w = np.broadcast_to(subject_weight, err.shape)
    return (err * w).sum() / max(w.sum(), 1.0)


def balanced_l1_map(a: np.ndarray, m: np.ndarray) -> float:
    """Code form: mean attention outside the mask − mean attention inside (one 2-D map)."""
    outside = (a * (1 - m)).sum() / ((1 - m).sum() + DENOMINATOR_EPS)
    inside = (a * m).sum() / (m.sum() + DENOMINATOR_EPS)
    return outside - inside


def l1_map(a: np.ndarray, m: np.ndarray) -> float:
    """Paper form: mean |A − M| (one 2-D map)."""
    return np.abs(a - m).mean()


def contrastive_map(a: np.ndarray, m: np.ndarray, others: np.ndarray) -> float:
    """balanced_l1 plus the mean attention inside the other subjects' masks (one 2-D map)."""
    return balanced_l1_map(a, m) + (a * others).sum() / (others.sum() + DENOMINATOR_EPS)


MAP_LOSSES = {"balanced_l1": balanced_l1_map, "l1": l1_map}


def per_token_losses(
    maps: list[np.ndarray], masks: dict[int, np.ndarray], kind: str, valid: np.ndarray
) -> np.ndarray:
    """(B, 2S) losses, the mean over layers. Tokens: each subject's `sks`, then each subject's
    entity word; both supervised by that subject's mask (`masks[r]`: (B, S, r, r)). `valid`
    (B, 2S): the supervised tokens, whose subjects are the "others" of the contrastive form."""
    b, k = maps[0].shape[0], maps[0].shape[-1]
    s = k // 2
    out = np.zeros((len(maps), b, k))
    for layer, attention in enumerate(maps):
        target = masks[attention.shape[1]]
        for i in range(b):
            for j in range(k):
                a, own = attention[i, :, :, j], target[i, j % s]
                if kind != "contrastive":
                    out[layer, i, j] = MAP_LOSSES[kind](a, own)
                    continue
                union = np.zeros_like(own)  # of every supervised subject's mask
                for subject in range(s):
                    if valid[i, subject]:
                        union = np.maximum(union, target[i, subject])
                out[layer, i, j] = contrastive_map(a, own, union * (1 - own))
    return out.mean(0)


# The normalisation of the per-token losses to one number; `valid` (B, K) marks supervised tokens.
def mean_over_valid_pairs(losses: np.ndarray, valid: np.ndarray) -> float:
    """The sum over every valid (sample, token) pair divided by their count."""
    return (losses * valid).sum() / max(valid.sum(), 1.0)


def mean_per_sample_then_batch(losses: np.ndarray, valid: np.ndarray) -> float:
    """The authors': per sample, the sum over its valid tokens / (their count + 1e-5); then the
    mean over the whole batch (a sample without valid tokens counts as 0)."""
    return ((losses * valid).sum(1) / (valid.sum(1) + DENOMINATOR_EPS)).mean()


NORMALISATIONS = {"pairs": mean_over_valid_pairs, "per_sample": mean_per_sample_then_batch}
# What sdjax computes by default; `train.attention_normalisation` names the two forms.
SDJAX_NORMALISATION = "pairs"
SDJAX_NAMES = {"per_token": "pairs", "per_sample": "per_sample"}


def expected_loss(
    prediction: np.ndarray,
    noise: np.ndarray,
    maps: list[np.ndarray],
    batch: dict,
    config,
    normalisation: str = SDJAX_NORMALISATION,
) -> tuple[float, float, float]:
    """(L, diffusion term, attention term) of SPEC's objective for one batch."""
    location = np.where(batch["drop_mask"][:, None, None, None], 0.0, batch["location_mask"])
    weight = None
    subjects = 1.0 - batch["location_mask"]  # the subjects' cells, seen by the UNet or not
    if config.masked_diffusion_loss:  # inside the subjects (mask 0); everywhere if it was dropped
        weight = np.where(batch["drop_mask"][:, None, None, None], 1.0, 1.0 - location)
    elif config.subject_loss_weight != 1.0:  # a subject cell counts w background cells
        weight = np.where(subjects > 0, config.subject_loss_weight, 1.0)
    diffusion = diffusion_term(prediction, noise, weight)
    supervised = (
        batch["subject_valid"] & ~batch["drop_subjects"][:, None] & ~batch["drop_text"][:, None]
    )
    valid = np.concatenate([supervised, supervised], axis=1).astype(np.float64)
    masks = {r: batch[f"subject_masks_{r}"] for r in {m.shape[1] for m in maps}}
    losses = per_token_losses(maps, masks, config.attention_loss, valid)
    attention = NORMALISATIONS[normalisation](losses, valid)
    return diffusion + LAMBDA_ATTN * attention, diffusion, attention


# ---------------------------------------------------------------- inputs the step builds


def dropped_prompt(ids: np.ndarray, drop_text: np.ndarray, config) -> np.ndarray:
    """Text dropout: the empty prompt — BOS, EOS, then padding."""
    empty = np.full(ids.shape[1], config.pad_id, ids.dtype)
    empty[:2] = (config.bos_id, config.eos_id)
    return np.where(drop_text[:, None], empty[None], ids)


@nnx.jit
def network(model, batch: dict, noisy_latents, timesteps, ids, subjects, fused, layout):
    """The model parts on the inputs built here: (noise prediction, attention maps); `layout`
    (boxes, valid) keeps the adapters to the boxes (None: as SPEC)."""
    tokens, embeds = model.encode_subjects(
        batch["subject_pixels"], batch["subject_boxes"], subjects
    )
    context = model.encode_prompt(ids, embeds, batch["placeholder_positions"], fused)
    location = jnp.where(batch["drop_mask"][:, None, None, None], 0.0, batch["location_mask"])
    unet_input = jnp.concatenate([noisy_latents, location], axis=-1)
    positions = jnp.concatenate([batch["placeholder_positions"], batch["entity_positions"]], 1)
    return model.unet(
        unet_input,
        timesteps,
        context,
        tokens,
        attention_positions=positions,
        grounding_layout=layout,
    )


def reference_loss(model, batch: dict, config, key: jax.Array) -> tuple[float, float, float]:
    tc = config.train
    _, k_noise, k_time = jax.random.split(key, 3)
    moments = batch["latent_moments"]
    x0 = moments[..., : moments.shape[-1] // 2] * model.vae.config.scaling_factor
    noise = np.asarray(jax.random.normal(k_noise, x0.shape, jnp.float32))
    t = np.asarray(jax.random.randint(k_time, (x0.shape[0],), 0, NUM_TRAIN_TIMESTEPS))
    subjects = batch["subject_valid"] & ~batch["drop_subjects"][:, None]
    fused = subjects & ~batch["drop_text"][:, None]
    ids = dropped_prompt(batch["input_ids"], batch["drop_text"], tc)
    # With `box_masked_adapter`, every grounding token of a subject given to the grounding net
    # has that subject's box.
    layout = None
    if model.conditioning.box_masked_adapter:
        n = model.grounding.config.num_patch_tokens
        layout = (np.repeat(batch["subject_boxes"], n, 1), np.repeat(subjects, n, 1))
    prediction, maps = network(model, batch, noised(x0, noise, t), t, ids, subjects, fused, layout)
    maps = [np.asarray(m, np.float64) for m in maps]
    normalisation = SDJAX_NAMES[tc.attention_normalisation]
    return expected_loss(np.asarray(prediction), noise, maps, batch, tc, normalisation)


# -------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return micro_config(",".join(build_sample_records(tmp_path_factory.mktemp("sample"))))


@pytest.fixture(scope="module")
def model(config):
    return trainer.init_model(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]))


@pytest.fixture(scope="module")
def base_batch(config, model):
    """A real batch with fixed latents (deterministic posterior) and one empty subject slot."""
    batch = dict(next(pipeline.make_iterator(config.data)))
    mean = np.asarray(jax.jit(lambda v, x: v.encode(x).mean)(model.vae, batch["image"]))
    batch["latent_moments"] = np.concatenate([mean, np.full_like(mean, LOGVAR_FIXED)], -1)
    valid = batch["subject_valid"].copy()
    valid[0, 1:] = False  # a null slot: the null features are part of the objective
    batch["subject_valid"] = valid
    assert batch["subject_valid"].sum() > batch["subject_valid"].shape[0]  # two subjects somewhere
    return batch


def sdjax_loss(config, model, batch: dict, key: jax.Array):
    """`subject_diffusion_loss` as the step calls it (jitted with the `train` section)."""
    schedule = schedulers.make_schedule(schedulers.SchedulerConfig(**config.scheduler.to_dict()))
    loss = nnx.jit(lambda m, b, k: subject_diffusion_loss(m, b, k, schedule, config.train))
    return loss(model, batch, key)


def check(loss, parts, want: float, want_diffusion: float, want_attention: float) -> None:
    """Each term within TOLERANCE; the attention term (about 1e-4 at initialisation) also
    relatively, and the weight λ it enters the loss with."""
    assert abs(float(parts["diffusion_loss"]) - want_diffusion) <= TOLERANCE
    assert float(parts["attention_loss"]) == pytest.approx(want_attention, rel=1e-4, abs=1e-9)
    assert abs(float(loss) - want) <= TOLERANCE
    if want_attention:
        weight = (float(loss) - float(parts["diffusion_loss"])) / float(parts["attention_loss"])
        assert weight == pytest.approx(LAMBDA_ATTN, rel=0.05)


B = 8
NONE = np.zeros(B, bool)
BRANCHES = {  # (drop_text, drop_mask, drop_subjects) per sample
    "kept": (NONE, NONE, NONE),
    "text": (~NONE, NONE, NONE),
    "text_and_mask": (~NONE, ~NONE, NONE),
    "mask": (NONE, ~NONE, NONE),
    "subjects": (NONE, NONE, ~NONE),
    "mixed": (
        np.array([0, 1, 1, 0, 0, 0, 1, 0], bool),
        np.array([0, 0, 1, 1, 0, 1, 0, 0], bool),
        np.array([0, 0, 0, 0, 1, 1, 1, 0], bool),
    ),
}


@pytest.mark.parametrize("branch", sorted(BRANCHES))
def test_loss_equals_the_numpy_objective_for_each_dropout_branch(config, model, base_batch, branch):
    drop_text, drop_mask, drop_subjects = BRANCHES[branch]
    batch = {**base_batch, "drop_text": drop_text, "drop_mask": drop_mask}
    batch["drop_subjects"] = drop_subjects
    key = jax.random.key(KEY)
    loss, parts = sdjax_loss(config, model, batch, key)
    want, want_diffusion, want_attention = reference_loss(model, batch, config, key)
    check(loss, parts, want, want_diffusion, want_attention)
    if branch in ("text", "text_and_mask", "subjects"):
        assert want_attention == 0.0  # nothing supervised
    else:
        assert abs(want_attention) > 1e-4


@pytest.mark.parametrize(
    "masked, subject_weight, kind",
    [(True, 1.0, "l1"), (False, 4.0, "balanced_l1"), (False, 1.0, "contrastive")],
)
def test_weighted_diffusion_loss_and_paper_attention_loss(
    config, model, base_batch, masked, subject_weight, kind
):
    """The options: the diffusion loss inside the subjects only, or with the subjects' cells
    weighted; the paper's L1 maps, or the balanced form that also costs the other subjects'."""
    drop_text, drop_mask, drop_subjects = BRANCHES["mixed"]
    batch = {**base_batch, "drop_text": drop_text, "drop_mask": drop_mask}
    batch["drop_subjects"] = drop_subjects
    changed = config.copy_and_resolve_references()
    changed.train.update(
        dict(masked_diffusion_loss=masked, subject_loss_weight=subject_weight, attention_loss=kind)
    )
    key = jax.random.key(KEY)
    loss, parts = sdjax_loss(changed, model, batch, key)
    want, want_diffusion, want_attention = reference_loss(model, batch, changed, key)
    plain = reference_loss(model, batch, config, key)
    if masked or subject_weight != 1.0:  # each option changes its term
        assert abs(want_diffusion - plain[1]) > 10 * TOLERANCE
    if kind != config.train.attention_loss:
        assert abs(want_attention - plain[2]) > 10 * TOLERANCE
    check(loss, parts, want, want_diffusion, want_attention)


@pytest.mark.parametrize("patch_boxes", [False, True])
def test_box_masked_adapter_keeps_each_cell_to_its_given_subjects(
    config, model, base_batch, patch_boxes
):
    """`model.box_masked_adapter`: the step hands the UNet the boxes of the subjects it gives the
    grounding net (dropped subjects are not among them), each token its subject's whole box also
    when `patch_boxes` puts its position code on its tile; with the adapters' gates open, keeping
    them to the boxes changes the loss."""
    drop_text, drop_mask, drop_subjects = BRANCHES["mixed"]
    batch = {**base_batch, "drop_text": drop_text, "drop_mask": drop_mask}
    batch["drop_subjects"] = drop_subjects
    opened = nnx.clone(model)
    for adapter in adapters_of(opened.unet):
        adapter.alpha_attn[...] = 1.0
        adapter.alpha_dense[...] = 1.0
    masked = nnx.clone(opened)
    masked.conditioning = dataclasses.replace(masked.conditioning, box_masked_adapter=True)
    grounding = masked.grounding.config
    masked.grounding.config = dataclasses.replace(grounding, patch_boxes=patch_boxes)
    key = jax.random.key(KEY)
    loss, parts = sdjax_loss(config, masked, batch, key)
    want, want_diffusion, want_attention = reference_loss(masked, batch, config, key)
    assert abs(want_diffusion - reference_loss(opened, batch, config, key)[1]) > 10 * TOLERANCE
    check(loss, parts, want, want_diffusion, want_attention)


def test_normalisations_differ_where_samples_have_different_token_counts():
    """The two normalisations: equal when every sample has as many valid tokens, not otherwise."""
    losses = np.array([[1.0, 3.0], [6.0, 0.0]])
    same = np.array([[1.0, 1.0], [1.0, 1.0]])
    assert mean_over_valid_pairs(losses, same) == pytest.approx(2.5)
    assert mean_per_sample_then_batch(losses, same) == pytest.approx(2.5, rel=1e-5)
    uneven = np.array([[1.0, 1.0], [1.0, 0.0]])
    assert mean_over_valid_pairs(losses, uneven) == pytest.approx(10 / 3)
    assert mean_per_sample_then_batch(losses, uneven) == pytest.approx(4.0, rel=1e-5)
    one_dropped = np.array([[1.0, 1.0], [0.0, 0.0]])
    assert mean_over_valid_pairs(losses, one_dropped) == pytest.approx(2.0)
    assert mean_per_sample_then_batch(losses, one_dropped) == pytest.approx(1.0, rel=1e-5)


def test_the_authors_per_sample_normalisation_in_the_step(config, model, base_batch):
    """`train.attention_normalisation="per_sample"`: the step's attention term is the authors'
    mean over each sample's tokens, then over the batch (text-dropped samples count as 0)."""
    drop_text, drop_mask, drop_subjects = BRANCHES["mixed"]
    batch = {**base_batch, "drop_text": drop_text, "drop_mask": drop_mask}
    batch["drop_subjects"] = drop_subjects
    changed = config.copy_and_resolve_references()
    changed.train.attention_normalisation = "per_sample"
    key = jax.random.key(KEY)
    loss, parts = sdjax_loss(changed, model, batch, key)
    want, want_diffusion, want_attention = reference_loss(model, batch, changed, key)
    assert abs(want_attention - reference_loss(model, batch, config, key)[2]) > 1e-6
    check(loss, parts, want, want_diffusion, want_attention)
