"""`SubjectDiffusionPipeline`: a prompt and subject images in, images out (SPEC §4).

The host prepares arrays (token ids, reference images, layout boxes, initial noise); one compiled
function then encodes the subjects and prompts, runs every denoising step in a `lax.fori_loop`
(three guidance branches as one batched UNet call) and decodes with the VAE in float32. Prompts,
subjects, layouts, seeds, guidance and adapter scales and the interpolation window are array
inputs: changing them reuses the compiled function. Sampler, step count, image size and batch
size are part of its shape and compile anew.

Batches are split over a 1-D mesh of devices (data parallel, parameters replicated), padded to
the batch size. Image n of a call starts from noise drawn from (seed, n) alone, so deterministic
samplers give the same image whatever the batching or device count.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict
from PIL import Image
from tqdm.auto import tqdm

from sdjax.models.subject_diffusion import SubjectDiffusion
from sdjax.sampling.base_model import (
    OUTSIDE_WINDOW,
    BaseModel,
    load_base_model,
    two_branch_epsilon,
)
from sdjax.sampling.errors import SamplingInputError
from sdjax.sampling.guidance import (
    Conditions,
    Guidance,
    branch_inputs,
    combine_branches,
    make_guidance,
    subject_phase,
)
from sdjax.sampling.images import to_pil
from sdjax.sampling.layout import RandomLayout, check_image_size, location_mask, resolve_layouts
from sdjax.sampling.prompts import prompt_ids
from sdjax.sampling.segment import SamSegmenter
from sdjax.sampling.subjects import Segmenter, Subject, read_subject, reference_image, subject_box
from sdjax.schedulers import (
    SAMPLERS,
    Sampler,
    SchedulerConfig,
    from_diffusers_config,
    get_sampler,
    make_schedule,
    sample_loop,
)
from sdjax.sharding import batch_sharding, make_mesh, replicated
from sdjax.tokenizer import load_tokenizer
from sdjax.weights.subject_diffusion import load_subject_diffusion

if TYPE_CHECKING:  # transformers loads where a tokenizer is made (`load_tokenizer`)
    from transformers import CLIPTokenizer

MESH_AXIS = "data"
DEFAULT_PER_DEVICE_BATCH = 4
INITIAL_NOISE_STREAM, STEP_NOISE_STREAM = 0, 1  # fold_in ids: the two uses of a call's seed


class SamplingInputs(NamedTuple):
    """One batch of per-image inputs, batch first."""

    noise: jax.Array  # (B, h, w, C) float32 unit Gaussian
    subject_pixels: jax.Array  # (B, S, s, s, 3) float32, CLIP-normalised
    subject_boxes: jax.Array  # (B, S, 4) float32 layout boxes in the output image
    subject_valid: jax.Array  # (B, S) bool: slots holding a subject (they shape the layout)
    reference_valid: jax.Array  # (B, S) bool: slots whose reference image is encoded
    prompt_ids: jax.Array  # (B, L) int32 template prompt
    placeholder_positions: jax.Array  # (B, S) int32; 0: the subject's placeholder was cut
    plain_ids: jax.Array  # (B, L) int32 the prompt without subject clauses
    negative_ids: jax.Array  # (B, L) int32


@functools.cache
def cached_sampler(name: str) -> Sampler:
    """One `Sampler` object per name, so it is a stable static argument of `jax.jit`."""
    return get_sampler(name)


def initial_noise(seed: jax.Array, indices: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """(len(indices), *shape) unit Gaussian float32; image n's noise depends on (seed, n) only."""
    key = jax.random.fold_in(jax.random.key(seed), INITIAL_NOISE_STREAM)
    return jax.vmap(lambda n: jax.random.normal(jax.random.fold_in(key, n), shape))(indices)


def step_noise_key(seed: jax.Array, batch_index: jax.Array) -> jax.Array:
    """Key of the per-step noise of stochastic samplers for one batch of a call."""
    stream = jax.random.fold_in(jax.random.key(seed), STEP_NOISE_STREAM)
    return jax.random.fold_in(stream, batch_index)


def conditions(
    model: SubjectDiffusion, inputs: SamplingInputs, use_bbox: jax.Array | bool = True
) -> Conditions:
    """Encodes the subjects and the three prompts of a batch."""
    valid = inputs.subject_valid
    grounding, subject_embeds = model.encode_subjects(
        inputs.subject_pixels, inputs.subject_boxes, inputs.reference_valid, use_bbox
    )
    net = model.grounding.config
    batch, slots = valid.shape
    null = model.grounding(
        jnp.zeros((1, slots, net.num_patch_tokens, net.patch_dim), jnp.float32),
        jnp.zeros((1, slots, 4), jnp.float32),
        jnp.zeros((1, slots), bool),
    )
    positions = inputs.placeholder_positions
    fused = model.encode_prompt(
        inputs.prompt_ids, subject_embeds, positions, inputs.reference_valid & (positions > 0)
    )
    height, width = inputs.noise.shape[1:3]
    return Conditions(
        subject_context=fused,
        plain_context=model.encode_prompt(inputs.plain_ids),
        negative_context=model.encode_prompt(inputs.negative_ids),
        location_mask=model.location_input(
            location_mask(inputs.subject_boxes, valid, height, width)
        ),
        grounding=grounding,
        null_grounding=jnp.broadcast_to(null, (batch, *null.shape[1:])),
        grounding_layout=model.grounding_layout(inputs.subject_boxes, inputs.reference_valid),
    )


def sample_batch(
    graphdef: nnx.GraphDef,
    base_graphdef: nnx.GraphDef | None,
    params: nnx.State,
    base_params: nnx.State | None,
    inputs: SamplingInputs,
    guidance: Guidance,
    seed: jax.Array,
    batch_index: jax.Array,
    *,
    sampler_name: str,
    steps: int,
    schedule_config: SchedulerConfig,
    scaling_factor: float,
) -> jax.Array:
    """Images (B, H, W, 3) float32 in [0, 1] of one batch: encode, denoise, decode. With a base
    model (`base_graphdef`, `base_params`), steps outside the window run it instead."""
    model = nnx.merge(graphdef, params)
    cond = conditions(model, inputs, guidance.use_bbox)
    sampler = cached_sampler(sampler_name)
    schedule = make_schedule(schedule_config)
    state = sampler.init_state(schedule, steps, inputs.noise)

    def subject_model(latents: jax.Array, timestep: jax.Array, phase: jax.Array) -> jax.Array:
        sample, context, grounding, layout = branch_inputs(latents, cond, phase)
        eps = model.unet(
            sample,
            timestep,
            context,
            grounding,
            adapter_scale=jnp.where(phase, guidance.adapter_scale, 0.0),
            grounding_layout=layout,
        )
        return combine_branches(eps, guidance.text_scale, guidance.image_scale)

    if base_graphdef is None:

        def model_fn(latents: jax.Array, timestep: jax.Array, step: jax.Array) -> jax.Array:
            return subject_model(latents, timestep, subject_phase(step, guidance))

    else:
        base = nnx.merge(base_graphdef, base_params)
        plain, negative = (
            base.text_encoder(inputs.plain_ids),
            base.text_encoder(inputs.negative_ids),
        )

        def model_fn(latents: jax.Array, timestep: jax.Array, step: jax.Array) -> jax.Array:
            return jax.lax.cond(
                subject_phase(step, guidance),
                lambda: subject_model(latents, timestep, jnp.bool_(True)),
                lambda: two_branch_epsilon(
                    base, latents, timestep, plain, negative, guidance.text_scale
                ).astype(latents.dtype),
            )

    key = step_noise_key(seed, batch_index)
    latents = sample_loop(sampler, schedule, state, model_fn, inputs.noise, key)
    decoded = model.vae.decode(latents.astype(jnp.float32) / scaling_factor)
    return jnp.clip((decoded.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)


class SubjectDiffusionPipeline:
    """Generates images of subjects from a prompt with a `SubjectDiffusion` model.

    model, config: the model and its full sdjax config (the sections read: `data` for the pad id,
    default resolution, CLIP mean/std and the random-layout ranges; `scheduler`; `sampling` for
    defaults; the latent scale is the VAE's own `scaling_factor`). tokenizer: CLIP BPE (default: the bundled one).
    devices: the devices to split each batch over (default: all local devices). batch_size:
    images per compiled call, a multiple of the device count (default: up to
    `DEFAULT_PER_DEVICE_BATCH` per device, fewer for fewer images). segmenter: cuts out subjects
    given without a mask (`sdjax.sampling.segment.SamSegmenter`; `from_pretrained` loads the one
    the export records in `sampling.segmenter`); None keeps their box with its background.
    base: the pretrained model that runs the steps outside the interpolation window (default:
    none, the fine-tuned model with the subjects off; see `sdjax.sampling.base_model`).
    """

    def __init__(
        self,
        model: SubjectDiffusion,
        config: ConfigDict,
        tokenizer: CLIPTokenizer | None = None,
        *,
        devices: Sequence[jax.Device] | None = None,
        batch_size: int | None = None,
        segmenter: Segmenter | None = None,
        base: BaseModel | None = None,
    ):
        self.config = config
        self.segmenter = segmenter
        self.tokenizer = tokenizer or load_tokenizer()
        self.devices = list(devices or jax.local_devices())
        if batch_size is not None and (batch_size <= 0 or batch_size % len(self.devices)):
            raise SamplingInputError(
                f"batch_size={batch_size} must be a positive multiple of {len(self.devices)} devices"
            )
        self.batch_size = batch_size
        self.mesh = make_mesh({MESH_AXIS: len(self.devices)}, self.devices)
        self.batch_sharding = batch_sharding(self.mesh, (MESH_AXIS,))
        self.max_subjects = model.grounding.config.max_subjects
        self.subject_size = model.image_encoder.config.image_size
        self.max_length = model.text_encoder.config.max_position_embeddings
        self.latent_channels = model.vae.config.latent_channels
        self.latent_scale = float(model.vae.config.scaling_factor)
        self.vae_factor = model.vae.downsample_factor
        self.size_multiple = self.vae_factor * 2 ** (len(model.unet.config.block_out_channels) - 1)
        self.schedule_config = from_diffusers_config(config.scheduler.to_dict())
        filters = config.data.filters
        self.random_layout = RandomLayout(
            area=(filters.min_area_ratio, filters.max_area_ratio),
            aspect=(filters.min_aspect, filters.max_aspect),
        )
        graphdef, params = nnx.split(model)
        self.params = jax.device_put(params, replicated(self.mesh))
        base_graphdef, self.base_params = None, None
        if base is not None:
            base_graphdef, base_params = nnx.split(base)
            self.base_params = jax.device_put(base_params, replicated(self.mesh))
        self.sample_fn = jax.jit(
            functools.partial(sample_batch, graphdef, base_graphdef),
            static_argnames=("sampler_name", "steps", "schedule_config", "scaling_factor"),
        )
        self.noise_fn = jax.jit(
            initial_noise, static_argnames=("shape",), out_shardings=self.batch_sharding
        )

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, base_model: str | Path | None = None, **kwargs
    ) -> SubjectDiffusionPipeline:
        """The pipeline of an sdjax export folder (`sdjax_config.json`, `unet/`, ..., `tokenizer/`).

        Steps outside the interpolation window run the pretrained base model when the export's
        `sampling.outside_window` is "base_model" (from its `model.pretrained` folder) or a
        `base_model` folder is given; else the fine-tuned model with the subjects off.
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"no exported model folder at {path} (`python train.py` exports one at its end; "
                "`python -m sdjax.export` exports a training run)"
            )
        model, config = load_subject_diffusion(path)
        if "segmenter" not in kwargs and config.sampling.get("segmenter"):
            kwargs["segmenter"] = SamSegmenter(config.sampling.segmenter)
        outside = config.sampling.get("outside_window", OUTSIDE_WINDOW[0])  # absent: older exports
        if outside not in OUTSIDE_WINDOW:
            raise SamplingInputError(
                f"sampling.outside_window={outside!r}; known: {list(OUTSIDE_WINDOW)}"
            )
        if base_model is None and outside == "base_model":
            base_model = config.model.pretrained
        base = None if base_model is None else load_base_model(base_model, config.model.dtype)
        return cls(model, config, load_tokenizer(path), base=base, **kwargs)

    def __call__(
        self, prompt: str, subjects: Sequence[Subject] = (), **kwargs
    ) -> list[Image.Image]:
        """The generated images as PIL images; arguments as in `generate`."""
        return to_pil(self.generate(prompt, subjects, **kwargs))

    def generate(
        self, prompt: str, subjects: Sequence[Subject] = (), *, num_images: int = 1, **kwargs
    ) -> np.ndarray:
        """Images (num_images, height, width, 3) float32 in [0, 1] of one prompt and subject set;
        keyword arguments as in `generate_each`."""

        def prepare(negative: str, seed: int, aspect: float, use_references: bool):
            return self._prepare(
                prompt, subjects, negative, num_images, seed, aspect, use_references
            )

        return self._generate(prepare, num_images, **kwargs)

    def generate_each(
        self, requests: Sequence[tuple[str, Sequence[Subject]]], **kwargs
    ) -> np.ndarray:
        """One image per (prompt, subjects) request, batched: (len(requests), H, W, 3) float32 in
        [0, 1]. Request k draws its random layouts as `generate(seed=seed + k)` would.

        steps, scheduler (one of `sdjax.schedulers.SAMPLERS`), guidance_text (s_T),
        guidance_image (s_I), adapter_scale (beta): default to the config's `sampling` section.
        height, width: default to the training resolution. negative_prompt: replaces the empty
        prompt of the i and u branches (see `sdjax.sampling.guidance`). interpolation: the
        (start, end) fractions of the schedule that use the subjects; other steps run the base
        model (fractions of the steps; PNDM's extra call falls after (0, 1), see
        `sdjax.sampling.guidance`). window: the reference code's inclusive model-call indices
        (start, end) instead of `interpolation`. use_bbox: the grounding net's box code (default: the export's config; False as the
        reference code's text-to-image test, True as its subject test; see `GroundingNet`).
        latents: optional initial noise (num_images, height/f, width/f, C), f the VAE factor.
        use_references: False drops the subjects' images (null grounding tokens, no CLS fusion)
        while their boxes still make the location mask and their clauses stay in the prompt, as
        training's `drop_subjects`: a control in which identity can come from nowhere.
        """

        def prepare(negative: str, seed: int, aspect: float, use_references: bool):
            parts = [
                self._prepare(prompt, subjects, negative, 1, seed + k, aspect, use_references)
                for k, (prompt, subjects) in enumerate(requests)
            ]
            return tuple(np.concatenate(arrays) for arrays in zip(*parts, strict=True))

        return self._generate(prepare, len(requests), **kwargs)

    def _generate(
        self,
        prepare,
        num_images: int,
        *,
        steps: int | None = None,
        scheduler: str | None = None,
        guidance_text: float | None = None,
        guidance_image: float | None = None,
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        negative_prompt: str = "",
        adapter_scale: float | None = None,
        interpolation: tuple[float, float] = (0.0, 1.0),
        window: tuple[int, int] | None = None,
        use_bbox: bool | None = None,
        latents: np.ndarray | None = None,
        use_references: bool = True,
        progress: bool = False,
    ) -> np.ndarray:
        """Checks the call, prepares its per-image arrays with `prepare` and samples them."""
        defaults = self.config.sampling
        steps = defaults.steps if steps is None else steps
        scheduler = scheduler or defaults.sampler
        height = self.config.data.resolution if height is None else height
        width = self.config.data.resolution if width is None else width
        self._check_call(num_images, seed, height, width, scheduler, steps)
        guidance = make_guidance(
            defaults.guidance_text if guidance_text is None else guidance_text,
            defaults.guidance_image if guidance_image is None else guidance_image,
            defaults.adapter_scale if adapter_scale is None else adapter_scale,
            interpolation,
            steps,
            self.config.model.grounding.use_bbox if use_bbox is None else use_bbox,
            window,
        )
        latent_shape = (height // self.vae_factor, width // self.vae_factor, self.latent_channels)
        if latents is not None and np.shape(latents) != (num_images, *latent_shape):
            raise SamplingInputError(
                f"latents have shape {np.shape(latents)}, expected {(num_images, *latent_shape)}"
            )
        per_image = prepare(negative_prompt, seed, width / height, use_references)

        static = dict(
            sampler_name=scheduler,
            steps=steps,
            schedule_config=self.schedule_config,
            scaling_factor=self.latent_scale,
        )
        return self._sample_batches(
            per_image, latents, latent_shape, seed, guidance, static, progress
        )

    def _check_call(
        self, num_images: int, seed: int, height: int, width: int, scheduler: str, steps: int
    ) -> None:
        if not isinstance(num_images, int) or num_images < 1:
            raise SamplingInputError(f"num_images={num_images!r} must be a positive integer")
        if not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise SamplingInputError(f"seed={seed!r} must be an integer in [0, 2**32)")
        check_image_size(height, width, self.size_multiple)
        if scheduler not in SAMPLERS:
            raise SamplingInputError(
                f"scheduler {scheduler!r} is unknown; choose one of {sorted(SAMPLERS)}"
            )
        max_steps = self.schedule_config.num_train_timesteps
        if not isinstance(steps, int) or not 1 <= steps <= max_steps:
            raise SamplingInputError(f"steps={steps!r} must be an integer in [1, {max_steps}]")

    def _sample_batches(
        self,
        per_image: tuple[np.ndarray, ...],
        latents: np.ndarray | None,
        latent_shape: tuple[int, int, int],
        seed: int,
        guidance: Guidance,
        static: dict,
        progress: bool,
    ) -> np.ndarray:
        """Runs the compiled function batch by batch; the last batch is padded with copies."""
        num_images = per_image[0].shape[0]
        batch = self._batch_size(num_images)
        outputs = []
        with tqdm(total=num_images, unit="image", desc="sampling", disable=not progress) as bar:
            for index, start in enumerate(range(0, num_images, batch)):
                indices = np.arange(start, start + batch)
                take = np.minimum(indices, num_images - 1)
                if latents is None:
                    noise = self.noise_fn(
                        jnp.uint32(seed), self._put(indices.astype(np.int32)), shape=latent_shape
                    )
                else:
                    noise = self._put(np.asarray(latents, np.float32)[take])
                inputs = SamplingInputs(noise, *(self._put(a[take]) for a in per_image))
                images = self.sample_fn(
                    self.params,
                    self.base_params,
                    inputs,
                    guidance,
                    jnp.uint32(seed),
                    jnp.int32(index),
                    **static,
                )
                kept = min(batch, num_images - start)
                outputs.append(np.asarray(jax.device_get(images))[:kept])
                bar.update(kept)
        return np.concatenate(outputs)

    def _batch_size(self, num_images: int) -> int:
        if self.batch_size is not None:
            return self.batch_size
        devices = len(self.devices)
        return devices * min(-(-num_images // devices), DEFAULT_PER_DEVICE_BATCH)

    def _put(self, array: np.ndarray) -> jax.Array:
        return jax.device_put(array, self.batch_sharding)

    def _prepare(
        self,
        prompt: str,
        subjects: Sequence[Subject],
        negative_prompt: str,
        num_images: int,
        seed: int,
        pixel_aspect: float,
        use_references: bool,
    ) -> tuple[np.ndarray, ...]:
        """Host arrays of every `SamplingInputs` field but the noise, num_images first."""
        subjects = list(subjects)
        slots = self.max_subjects
        if len(subjects) > slots:
            raise SamplingInputError(
                f"{len(subjects)} subjects given but the model has {slots} subject slots"
            )
        pixels = np.zeros((slots, self.subject_size, self.subject_size, 3), np.float32)
        own_boxes = []
        augment = self.config.data.augment
        for i, subject in enumerate(subjects):
            image, mask = read_subject(subject, self.segmenter)
            own_boxes.append(subject_box(subject, mask))
            pixels[i] = reference_image(
                image, mask, own_boxes[-1], self.subject_size, augment.clip_mean, augment.clip_std
            )
        boxes = np.zeros((num_images, slots, 4), np.float32)
        boxes[:, : len(subjects)] = resolve_layouts(
            [s.layout for s in subjects],
            own_boxes,
            num_images,
            seed,
            self.random_layout,
            pixel_aspect,
        )
        valid = np.arange(slots) < len(subjects)

        labels = [s.resolved_label() for s in subjects]
        ids = functools.partial(
            prompt_ids, self.tokenizer, pad_id=self.config.data.pad_id, max_length=self.max_length
        )
        template = ids(prompt, labels)
        plain = ids(prompt, [], warn=False) if labels else template
        negative = ids(negative_prompt, [], what="negative prompt")
        positions = np.zeros(slots, np.int32)
        positions[: len(subjects)] = template.placeholder_positions

        def repeat(array: np.ndarray) -> np.ndarray:
            return np.broadcast_to(array, (num_images, *array.shape))

        return (
            repeat(pixels),
            boxes,
            repeat(valid),
            repeat(valid & use_references),
            repeat(template.ids),
            repeat(positions),
            repeat(plain.ids),
            repeat(negative.ids),
        )
