"""The sampling pipeline: parity with diffusers' StableDiffusionPipeline, guidance, layout, inputs.

Parity: tiny random diffusers components (UNet, VAE, CLIP text encoder) and the bundled CLIP
tokenizer are saved with `save_pretrained` and loaded into sdjax (conv_in grows a zero mask
channel, adapters are zero-gated; image encoder and grounding net random and unused). With no
subjects the i and u branches see the same empty prompt, zero adapter output and a mask channel
whose weights are zero, so eps_i == eps_u and three-branch guidance is diffusers' two-branch CFG:
eps_u + s_T (eps_c - eps_u). From the same initial latents (DDIM, and Euler), the images agree
within 1e-3.

The other tests use an "active" copy of that model (adapter gates and mask-channel weights made
nonzero) so subjects, masks and the interpolation window visibly change the images.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from flax import nnx
from ml_collections import ConfigDict
from PIL import Image

from configs import tiny
from sdjax.export import export_model
from sdjax.models.subject_diffusion import SubjectDiffusion
from sdjax.sampling import SamplingInputError, Subject, SubjectDiffusionPipeline, image_grid
from sdjax.sampling.base_model import load_base_model
from sdjax.sampling.guidance import (
    Conditions,
    branch_inputs,
    combine_branches,
    make_guidance,
    subject_phase,
    window_steps,
)
from sdjax.sampling.layout import RandomLayout, check_box, location_mask, resolve_layouts
from sdjax.sampling.subjects import read_subject, reference_image, subject_box
from sdjax.schedulers import SchedulerConfig, get_sampler, make_schedule
from sdjax.tokenizer import load_tokenizer
from sdjax.weights.subject_diffusion import load_parts

PARITY_TOL = 1e-3  # images in [0, 1]
SHARDED_TOL = 1e-5
STEPS = 5
HEIGHT, WIDTH = 32, 48  # non-square; multiples of 4 = VAE factor 2 x UNet downsampling 2
LATENT = (HEIGHT // 2, WIDTH // 2, 4)
NUM_IMAGES = 2
HIDDEN = 32
UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(2, 4),
    cross_attention_dim=HIDDEN,
    use_linear_projection=True,
    norm_num_groups=16,
)
VAE = dict(
    block_out_channels=(16, 32),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    latent_channels=4,
    norm_num_groups=8,
    layers_per_block=1,
)
TEXT = dict(
    hidden_size=HIDDEN,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    hidden_act="gelu",
)
VISION = dict(
    image_size=32,
    patch_size=8,
    hidden_size=HIDDEN,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    projection_dim=HIDDEN,
    hidden_act="gelu",
)
VAE_FIELDS = ("block_out_channels", "latent_channels", "norm_num_groups", "layers_per_block")
SD_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def perturb_(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Moves every parameter off its initial value (norm scales off 1, zero biases off 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model.eval()


def save_tiny_parts(folder) -> dict[str, torch.nn.Module]:
    """Tiny random diffusers/transformers parts and the bundled tokenizer, saved under `folder`."""
    torch.manual_seed(0)
    parts = {
        "unet": perturb_(UNet2DConditionModel(**UNET), 1),
        "vae": perturb_(AutoencoderKL(**VAE), 2),
        "text_encoder": perturb_(
            transformers.CLIPTextModel(transformers.CLIPTextConfig(**TEXT)), 3
        ),
        "image_encoder": perturb_(
            transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**VISION)), 4
        ),
    }
    for name, part in parts.items():
        part.save_pretrained(folder / name)
    load_tokenizer().save_pretrained(folder / "tokenizer")
    return parts


def tiny_config():
    """The tiny preset with its model section describing the parts above (as an export needs)."""
    config = tiny.get_config()
    config.model.unet = ConfigDict(
        {**UNET, "in_channels": 5, "grounding_dim": HIDDEN, "attention_map_factors": (1, 2)}
    )
    config.model.vae = ConfigDict({k: VAE[k] for k in VAE_FIELDS})
    config.model.text_encoder = ConfigDict(TEXT)
    config.model.image_encoder = ConfigDict(VISION)
    config.model.grounding = ConfigDict(dict(hidden_dim=HIDDEN, max_subjects=2, use_bbox=True))
    return config


@pytest.fixture(scope="module")
def diffusers_parts(tmp_path_factory):
    """(folder, diffusers StableDiffusionPipeline) of tiny random saved components."""
    folder = tmp_path_factory.mktemp("sd")
    parts = save_tiny_parts(folder)
    reference = StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=load_tokenizer(folder),
        unet=parts["unet"],
        scheduler=DDIMScheduler(**SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    return folder, reference


def load_model(folder) -> SubjectDiffusion:
    """The saved parts in sdjax (UNet with 5 input channels, zero-gated adapters), with a freshly
    initialised grounding net and CLS projector."""
    return load_parts(tiny_config().model, base=folder, image_encoder=folder / "image_encoder")


def activate(model: SubjectDiffusion, seed: int = 0) -> SubjectDiffusion:
    """A copy whose adapter gates and conv_in mask channel are nonzero (a trained-like model)."""
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(seed)
    flat = dict(nnx.to_flat_state(state))
    for path, var in flat.items():
        value = np.array(var.get_value())
        if path[-1] in ("alpha_attn", "alpha_dense"):
            var.set_value(np.full_like(value, 0.5))
        elif path[:2] == ("unet", "conv_in") and path[-1] == "kernel":
            value[:, :, 4] = rng.normal(0.0, 0.3, value[:, :, 4].shape)
            var.set_value(value)
        elif path[0] == "grounding" and "null" in str(path[-1]):
            var.set_value(rng.normal(0.0, 1.0, value.shape).astype(value.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


@pytest.fixture(scope="module")
def parity_pipe(diffusers_parts):
    folder, _ = diffusers_parts
    return SubjectDiffusionPipeline(
        load_model(folder),
        tiny_config(),
        load_tokenizer(folder),
        devices=jax.local_devices()[:1],
    )


@pytest.fixture(scope="module")
def active_model(diffusers_parts):
    return activate(load_model(diffusers_parts[0]))


@pytest.fixture(scope="module")
def pipe(active_model):
    return SubjectDiffusionPipeline(active_model, tiny_config(), devices=jax.local_devices()[:1])


@pytest.fixture(scope="module")
def subject_files(tmp_path_factory):
    """A cat-like and a dog-like subject image (PNG) and a mask for the first."""
    folder = tmp_path_factory.mktemp("subjects")
    rng = np.random.default_rng(0)
    files = {}
    for name in ("cat", "dog"):
        pixels = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
        files[name] = folder / f"{name}.png"
        Image.fromarray(pixels).save(files[name])
    mask = np.zeros((40, 30), np.uint8)
    mask[8:32, 4:20] = 255
    files["mask"] = folder / "cat_mask.png"
    Image.fromarray(mask).save(files["mask"])
    return files


def run(pipeline: SubjectDiffusionPipeline, prompt: str = "a photo", subjects=(), **kwargs):
    options = dict(num_images=NUM_IMAGES, steps=STEPS, height=HEIGHT, width=WIDTH, seed=0)
    return pipeline.generate(prompt, subjects, **{**options, **kwargs})


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


# ------------------------------------------------------------------------------ parity


@pytest.mark.parametrize(
    "name,scheduler", [("ddim", DDIMScheduler), ("euler", EulerDiscreteScheduler)]
)
def test_matches_diffusers_without_subjects(diffusers_parts, parity_pipe, name, scheduler):
    _, reference = diffusers_parts
    # Euler also scales the model input and the initial noise: the mask must join after scaling.
    reference.scheduler = scheduler.from_config(DDIMScheduler(**SD_SCHEDULER).config)
    latents = np.random.default_rng(0).standard_normal((NUM_IMAGES, *LATENT), dtype=np.float32)
    prompt = "a small red house by a lake"
    expected = reference(
        prompt,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        num_images_per_prompt=NUM_IMAGES,
        latents=torch.from_numpy(latents.transpose(0, 3, 1, 2).copy()),
        output_type="np",
    ).images
    ours = run(
        parity_pipe,
        prompt,
        scheduler=name,
        guidance_text=7.5,
        guidance_image=1.5,  # no effect without subjects: eps_i == eps_u
        latents=latents,
    )
    assert ours.shape == expected.shape == (NUM_IMAGES, HEIGHT, WIDTH, 3)
    assert expected.std() > 0.01  # a real image, not a constant
    assert max_diff(ours, expected) < PARITY_TOL


def fine_tuned(model: SubjectDiffusion) -> SubjectDiffusion:
    """A copy whose text encoder has moved off the pretrained one (as training moves it)."""
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    for path, var in flat.items():
        if path[0] == "text_encoder" and "final_layer_norm" in path and path[-1] == "bias":
            var.set_value(var.get_value() + 0.5)
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def test_base_model_runs_outside_the_window_and_the_fine_tuned_inside(
    diffusers_parts, active_model, subject_files
):
    """The reference code's interpolation: outside the window the pretrained UNet and text
    encoder with two-branch guidance (so no window is plain Stable Diffusion, as diffusers draws
    it); inside it the fine-tuned model, as without a base model."""
    folder, reference = diffusers_parts
    reference.scheduler = DDIMScheduler(**SD_SCHEDULER)
    model, devices = fine_tuned(active_model), jax.local_devices()[:1]
    based = SubjectDiffusionPipeline(
        model, tiny_config(), devices=devices, base=load_base_model(folder)
    )
    alone = SubjectDiffusionPipeline(model, tiny_config(), devices=devices)
    latents = np.random.default_rng(0).standard_normal((NUM_IMAGES, *LATENT), dtype=np.float32)
    cat = Subject(subject_files["cat"], layout=(0.1, 0.1, 0.5, 0.9))
    prompt = "a cat by a lake"
    expected = reference(
        prompt,
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        num_images_per_prompt=NUM_IMAGES,
        latents=torch.from_numpy(latents.transpose(0, 3, 1, 2).copy()),
        output_type="np",
    ).images
    options = dict(scheduler="ddim", guidance_text=7.5, latents=latents)
    never = dict(interpolation=(0.0, 0.0), **options)
    assert max_diff(run(based, prompt, [cat], **never), expected) < PARITY_TOL
    assert max_diff(run(alone, prompt, [cat], **never), expected) > 1e-3
    inside = run(based, prompt, [cat], **options)
    assert max_diff(inside, run(alone, prompt, [cat], **options)) < SHARDED_TOL
    half = dict(window=(0, STEPS // 2 - 1), **options)
    mixed = run(based, prompt, [cat], **half)
    assert max_diff(mixed, run(alone, prompt, [cat], **half)) > 1e-3
    assert max_diff(mixed, inside) > 1e-3 and max_diff(mixed, expected) > 1e-3


# --------------------------------------------------------------- seeds, compilation, guidance


def test_seeds_and_one_compilation(pipe, subject_files):
    cat = Subject(subject_files["cat"], mask=subject_files["mask"], layout=(0.1, 0.2, 0.5, 0.9))
    dog = Subject(subject_files["dog"], label="puppy")
    first = run(pipe, "a cat on a sofa", [cat], seed=0)
    assert max_diff(first, run(pipe, "a cat on a sofa", [cat], seed=0)) == 0.0
    assert max_diff(first, run(pipe, "a cat on a sofa", [cat], seed=1)) > 0.05
    assert max_diff(first[0], first[1]) > 0.05  # images of one call start from different noise
    run(pipe, "a dog and a cat in the snow", [dog, cat], seed=5, guidance_text=3.0)
    run(pipe, "nothing special", guidance_image=0.5, adapter_scale=0.3, negative_prompt="blurry")
    run(pipe, "a cat", [cat], interpolation=(0.2, 0.6), seed=7)
    run(pipe, "a cat", [cat], use_bbox=False)
    assert pipe.sample_fn._cache_size() == 1


def test_use_bbox_per_call_reaches_the_grounding_net(pipe, subject_files):
    """A lone subject's box code goes with `use_bbox=False` (the reference code's text test)."""
    cat = Subject(subject_files["cat"], layout=(0.1, 0.1, 0.5, 0.9))
    assert pipe.config.model.grounding.use_bbox  # the export's default
    with_box = run(pipe, "a cat", [cat])
    assert max_diff(with_box, run(pipe, "a cat", [cat], use_bbox=True)) == 0.0
    assert max_diff(with_box, run(pipe, "a cat", [cat], use_bbox=False)) > 1e-4


def test_subjects_layout_and_adapter_scale_change_the_image(pipe, subject_files):
    cat = Subject(subject_files["cat"], layout=(0.1, 0.1, 0.5, 0.9))
    base = run(pipe, "a cat", [cat])
    assert max_diff(base, run(pipe, "a cat", [Subject(subject_files["dog"], label="cat")])) > 1e-3
    moved = Subject(subject_files["cat"], layout=(0.5, 0.1, 0.9, 0.9))
    assert max_diff(base, run(pipe, "a cat", [moved])) > 1e-3
    assert max_diff(base, run(pipe, "a cat", [cat], adapter_scale=0.0)) > 1e-3
    assert max_diff(base, run(pipe, "a cat", [cat], guidance_image=4.0)) > 1e-3


def test_interpolation_outside_the_window_ignores_subjects(pipe, subject_files):
    cat = Subject(subject_files["cat"], layout=(0.1, 0.1, 0.5, 0.9))
    dog = Subject(subject_files["dog"], layout=(0.3, 0.0, 1.0, 0.5))
    never = dict(interpolation=(0.0, 0.0))
    without = run(pipe, "a cat", [cat], **never)
    # Base behaviour in every step: plain prompt, zero mask, no adapter; the subjects cannot matter.
    assert max_diff(without, run(pipe, "a cat", [dog], **never)) < SHARDED_TOL
    assert max_diff(without, run(pipe, "a cat", **never)) < SHARDED_TOL
    half = run(pipe, "a cat", [cat], interpolation=(0.0, 0.5))
    full = run(pipe, "a cat", [cat])
    assert max_diff(half, without) > 1e-3
    assert max_diff(half, full) > 1e-3


def test_negative_prompt(pipe):
    plain = run(pipe, "a tree")
    assert max_diff(plain, run(pipe, "a tree", negative_prompt="")) == 0.0
    assert max_diff(plain, run(pipe, "a tree", negative_prompt="ugly, blurry")) > 1e-3


def test_sharded_batch_matches_one_device(active_model, pipe, subject_files):
    sharded = SubjectDiffusionPipeline(active_model, tiny_config())
    assert len(sharded.devices) == 8
    cat = Subject(subject_files["cat"], label="cat")
    expected = run(pipe, "a cat", [cat], seed=3)
    ours = run(sharded, "a cat", [cat], seed=3)  # 2 images padded to a batch of 8
    assert ours.shape == expected.shape
    assert max_diff(ours, expected) < SHARDED_TOL


def test_from_pretrained_export_round_trip(active_model, pipe, subject_files, tmp_path):
    export_model(active_model, tiny_config(), tmp_path / "export")
    loaded = SubjectDiffusionPipeline.from_pretrained(
        tmp_path / "export", devices=jax.local_devices()[:1]
    )
    cat = Subject(subject_files["cat"], layout=(0.2, 0.2, 0.7, 0.8))
    assert max_diff(run(loaded, "a cat", [cat]), run(pipe, "a cat", [cat])) < SHARDED_TOL
    with pytest.raises(FileNotFoundError, match="no exported model folder"):
        SubjectDiffusionPipeline.from_pretrained(tmp_path / "nothing")


def test_pil_output_and_grid(pipe):
    images = pipe("a tree", num_images=NUM_IMAGES, steps=STEPS, height=HEIGHT, width=WIDTH)
    assert [im.size for im in images] == [(WIDTH, HEIGHT)] * NUM_IMAGES
    assert image_grid(images).size == (2 * WIDTH, HEIGHT)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "layout,message",
    [((0.1, 0.2, 1.5, 0.9), "1.5"), ((0.3, 0.2, 0.3, 0.9), "zero area"), ((0.1, 0.2), "4")],
)
def test_bad_layout_box(pipe, subject_files, layout, message):
    with pytest.raises(SamplingInputError, match=message):
        run(pipe, "a cat", [Subject(subject_files["cat"], layout=layout)])


def test_too_many_subjects(pipe, subject_files):
    subjects = [Subject(subject_files["cat"])] * 3
    with pytest.raises(SamplingInputError, match="3 subjects .* 2 subject slots"):
        run(pipe, "cats", subjects)


def test_unreadable_image(pipe, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(SamplingInputError, match="broken.png"):
        run(pipe, "a cat", [Subject(broken)])
    with pytest.raises(SamplingInputError, match="missing.png"):
        run(pipe, "a cat", [Subject(tmp_path / "missing.png")])


def test_mask_of_the_wrong_size(pipe, subject_files):
    mask = np.ones((10, 10), bool)
    with pytest.raises(SamplingInputError, match="10x10 but its image is 30x40"):
        run(pipe, "a cat", [Subject(subject_files["cat"], mask=mask)])


@pytest.mark.parametrize("size", [dict(height=30), dict(width=50), dict(height=0)])
def test_size_not_a_multiple(pipe, size):
    name, value = next(iter(size.items()))
    with pytest.raises(
        SamplingInputError, match=f"{name}={value} must be a positive multiple of 4"
    ):
        run(pipe, "a cat", **size)


def test_other_bad_arguments(pipe, subject_files):
    with pytest.raises(SamplingInputError, match="scheduler 'heun'"):
        run(pipe, scheduler="heun")
    with pytest.raises(SamplingInputError, match="steps=0"):
        run(pipe, steps=0)
    with pytest.raises(SamplingInputError, match=r"interpolation \(0.8, 0.2\)"):
        run(pipe, interpolation=(0.8, 0.2))
    with pytest.raises(SamplingInputError, match="latents have shape"):
        run(pipe, latents=np.zeros((1, 4, 4, 4), np.float32))
    with pytest.raises(SamplingInputError, match="needs a label"):
        run(pipe, subjects=[Subject(np.zeros((8, 8, 3), np.uint8))])


def test_long_prompt_is_truncated_with_a_warning(pipe, subject_files):
    prompt = " ".join(["word"] * 80)
    with pytest.warns(UserWarning, match="82 tokens; truncated to 77"):
        images = run(pipe, prompt)
    assert images.shape == (NUM_IMAGES, HEIGHT, WIDTH, 3)
    with pytest.warns(UserWarning, match=r"subjects \['cat'\] lost their placeholder"):
        run(pipe, prompt, [Subject(subject_files["cat"])])


# ------------------------------------------------------------------------ pure functions


def test_combine_branches_is_the_three_branch_formula():
    rng = np.random.default_rng(0)
    eps = rng.standard_normal((2 * 3, 4, 4, 4)).astype(np.float32)
    c, i, u = eps[0::3], eps[1::3], eps[2::3]
    expected = u + 7.5 * (c - i) + 1.5 * (i - u)
    np.testing.assert_allclose(combine_branches(eps, 7.5, 1.5), expected, atol=1e-5)


def test_branch_inputs_order_and_window():
    b, h, w = 2, 3, 4
    ones = lambda *shape: np.ones(shape, np.float32)  # noqa: E731
    cond = Conditions(
        subject_context=ones(b, 5, 6) * 1,
        plain_context=ones(b, 5, 6) * 2,
        negative_context=ones(b, 5, 6) * 3,
        location_mask=ones(b, h, w, 1) * 0.5,
        grounding=ones(b, 7, 8) * 4,
        null_grounding=ones(b, 7, 8) * 5,
    )
    latents = np.random.default_rng(0).standard_normal((b, h, w, 4)).astype(np.float32)
    for phase, prompt, mask in ((True, 1, 0.5), (False, 2, 0.0)):
        sample, context, grounding, layout = branch_inputs(latents, cond, np.bool_(phase))
        assert layout is None
        assert sample.shape == (3 * b, h, w, 5)
        np.testing.assert_array_equal(sample[3, ..., :4], latents[1])
        np.testing.assert_array_equal(context[:, 0, 0], [prompt, 3, 3] * b)
        np.testing.assert_array_equal(sample[:, 0, 0, 4], [mask, mask, 0.0] * b)
        np.testing.assert_array_equal(grounding[:, 0, 0], [4, 4, 5] * b)
    boxes = np.random.default_rng(1).random((b, 2, 4)).astype(np.float32)
    valid = np.array([[True, False], [True, True]])
    layout = branch_inputs(latents, cond._replace(grounding_layout=(boxes, valid)), True)[3]
    np.testing.assert_array_equal(layout[0], np.repeat(boxes, 3, axis=0))
    np.testing.assert_array_equal(layout[1][0::3], valid)  # conditional: the subjects
    np.testing.assert_array_equal(layout[1][1::3], valid)  # image-only: the subjects
    assert not np.any(layout[1][2::3])  # unconditional: no subject, as its null grounding
    guidance = make_guidance(7.5, 1.5, 1.0, (0.2, 0.6), 10)
    assert (int(guidance.start_step), int(guidance.end_step)) == (2, 6)
    assert window_steps((0.0, 1.0), 7) == (0, 7)


def test_pndm_window_counts_model_calls_as_the_reference_code():
    """PNDM makes n + 1 calls; (0, 1) runs n of them with subjects and the last one without (the
    reference's `i < 50`); the inclusive window (0, n) holds every call."""
    steps = 50
    calls = len(get_sampler("pndm").timesteps(make_schedule(SchedulerConfig()), steps))
    assert calls == steps + 1

    def phases(guidance):
        return [bool(subject_phase(np.int32(i), guidance)) for i in range(calls)]

    fractions = phases(make_guidance(7.5, 1.5, 1.0, (0.0, 1.0), steps))
    assert fractions == [True] * steps + [False]
    assert (
        phases(make_guidance(7.5, 1.5, 1.0, (0.0, 1.0), steps, window=(0, steps))) == [True] * calls
    )
    inclusive = phases(make_guidance(7.5, 1.5, 1.0, (0.0, 1.0), steps, window=(10, 20)))
    assert [i for i, p in enumerate(inclusive) if p] == list(range(10, 21))
    with pytest.raises(SamplingInputError, match="window"):
        make_guidance(7.5, 1.5, 1.0, (0.0, 1.0), steps, window=(0.5, 3))


def test_location_mask_marks_box_cells():
    boxes = np.array([[[0.0, 0.0, 0.5, 0.5], [0.75, 0.5, 1.0, 1.0]]], np.float32)
    mask = np.asarray(location_mask(boxes, np.array([[True, False]]), 4, 8))[0, ..., 0]
    expected = np.ones((4, 8))
    expected[:2, :4] = 0
    np.testing.assert_array_equal(mask, expected)


def test_layouts():
    ranges = RandomLayout(area=(0.08, 0.7), aspect=(0.3, 3.0))
    own = (0.2, 0.1, 0.6, 0.8)
    boxes = resolve_layouts([None], [own], 3, 0, ranges, 1.5)
    np.testing.assert_allclose(boxes, np.broadcast_to(own, (3, 1, 4)), atol=1e-6)
    drawn = resolve_layouts([None, None], [own, None], 4, 1, ranges, 1.5)
    again = resolve_layouts([None, None], [own, None], 4, 1, ranges, 1.5)
    np.testing.assert_array_equal(drawn, again)
    assert not np.allclose(drawn[0], drawn[1])  # per image
    assert (drawn[:, 0, 2] <= 0.5 + 1e-6).all() and (drawn[:, 1, 0] >= 0.5 - 1e-6).all()
    for box in drawn.reshape(-1, 4):
        check_box(box, "drawn box")
    given = resolve_layouts([(0.1, 0.1, 0.2, 0.2), None], [None, None], 1, 0, ranges, 1.0)
    np.testing.assert_allclose(given[0, 0], (0.1, 0.1, 0.2, 0.2))


def test_reference_image_cuts_out_the_subject(subject_files):
    subject = Subject(subject_files["cat"], mask=subject_files["mask"])
    pixels, mask = read_subject(subject)
    box = subject_box(subject, mask)
    np.testing.assert_allclose(box, (4 / 30, 8 / 40, 20 / 30, 32 / 40))
    image = reference_image(pixels, mask, box, 24, (0, 0, 0), (1, 1, 1))
    # The 16x24 cut-out is padded to 24x24 with white columns at both sides, then resized to 24.
    np.testing.assert_array_equal(image[:, :3], 1.0)
    np.testing.assert_array_equal(image[:, -3:], 1.0)
    np.testing.assert_allclose(image[:, 4:20], pixels[8:32, 4:20] / 255.0, atol=1e-6)
    rgba = np.concatenate([pixels, np.where(mask, 255, 0).astype(np.uint8)[..., None]], -1)
    np.testing.assert_array_equal(read_subject(Subject(rgba, label="cat"))[1], mask)
    float_mask = Subject(pixels, mask=mask.astype(np.float32), label="cat")
    np.testing.assert_array_equal(read_subject(float_mask)[1], mask)
    boxed = Subject(subject_files["dog"], box=(0.0, 0.0, 0.5, 1.0))
    dog, _ = read_subject(boxed)
    view = reference_image(dog, None, subject_box(boxed, None), 40, (0, 0, 0), (1, 1, 1))
    np.testing.assert_allclose(view[:, 12:27], dog[:, :15] / 255.0, atol=1e-6)
