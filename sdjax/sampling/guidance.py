"""Three-branch classifier-free guidance and text–image interpolation (SPEC §4), as pure functions.

Branches, batched as one UNet call (B, 3, ...) → (3B, ...), example-major so a batch sharded over
devices stays local:
  c: template prompt with subject fusion + location mask + subject grounding tokens
  i: negative prompt + location mask + subject grounding tokens
  u: negative prompt + zero mask + null grounding tokens (every slot invalid)
  eps = eps_u + s_T * (eps_c - eps_i) + s_I * (eps_i - eps_u)
The negative prompt ("" by default) replaces the empty prompt of BOTH the i and u branches, as
in the reference implementation: s_T then pushes from the negative prompt towards the prompt with
the subjects held fixed, and s_I adds the subjects' pull with the text held at the negative prompt.

Steps outside the interpolation window [start, end) run the base UNet behaviour: adapter scale 0,
the plain prompt (no subject clauses, no fusion) and a zero mask in every branch. Then i == u and
the formula is ordinary two-branch guidance of scale s_T. With a base model (the reference code,
`sdjax.sampling.base_model`) those steps run the pretrained UNet and text encoder instead. The window is in traced step indices,
so changing it does not recompile.

Step indices count model calls, as the reference code's `for i, t in enumerate(timesteps)`: PNDM
makes n + 1 calls for n steps, so the fractions (0, 1) give calls [0, n) and its last call runs
without subjects, exactly as the reference's text-to-image test (`if i < 50`, 50 PNDM steps).
An inclusive integer window (`window=(start, end)`, the reference's subject test
`start <= i <= end`) names the calls directly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sdjax.sampling.errors import SamplingInputError

NUM_BRANCHES = 3


class Guidance(NamedTuple):
    """Per-call settings as device scalars (traced, so changing them does not recompile)."""

    text_scale: jax.Array  # s_T, float32
    image_scale: jax.Array  # s_I, float32
    adapter_scale: jax.Array  # beta, float32
    start_step: jax.Array  # int32: first step of the subject phase
    end_step: jax.Array  # int32: first step after it
    use_bbox: jax.Array  # bool: the grounding net's box code (see `GroundingNet`)


class Conditions(NamedTuple):
    """Everything the branches are built from, batch first (B, ...)."""

    subject_context: jax.Array  # (B, L, D) template prompt with subject fusion
    plain_context: jax.Array  # (B, L, D) the prompt alone, no fusion
    negative_context: jax.Array  # (B, L, D)
    location_mask: jax.Array  # (B, h, w, 1)
    grounding: jax.Array  # (B, M, G) subject grounding tokens
    null_grounding: jax.Array  # (B, M, G) grounding tokens of empty slots
    # each grounding token's box (B, M, 4) and validity (B, M), keeping the adapters to the
    # boxes (`SubjectDiffusion.grounding_layout`; None: not kept)
    grounding_layout: tuple[jax.Array, jax.Array] | None = None


def window_steps(interpolation: tuple[float, float], steps: int) -> tuple[int, int]:
    """Step indices [start, end) of the subject phase from fractions of the schedule."""
    try:
        start, end = (float(v) for v in interpolation)
    except (TypeError, ValueError):
        raise SamplingInputError(
            f"interpolation {interpolation!r} must be two fractions (start, end)"
        ) from None
    if not (0.0 <= start <= end <= 1.0):
        raise SamplingInputError(
            f"interpolation {interpolation!r} must satisfy 0 <= start <= end <= 1"
        )
    return round(start * steps), round(end * steps)


def inclusive_window(window: tuple[int, int]) -> tuple[int, int]:
    """Call indices [start, end + 1) of the reference code's inclusive window `start <= i <= end`."""
    if (
        not isinstance(window, tuple | list)
        or len(window) != 2
        or not all(isinstance(v, int) and v >= 0 for v in window)
    ):
        raise SamplingInputError(f"window {window!r} must be two step indices (start, end) >= 0")
    return window[0], window[1] + 1


def make_guidance(
    text_scale: float,
    image_scale: float,
    adapter_scale: float,
    interpolation: tuple[float, float],
    steps: int,
    use_bbox: bool = True,
    window: tuple[int, int] | None = None,
) -> Guidance:
    """Checked `Guidance` of one call; an inclusive `window` of call indices replaces the
    `interpolation` fractions."""
    for name, value in (
        ("guidance_text", text_scale),
        ("guidance_image", image_scale),
        ("adapter_scale", adapter_scale),
    ):
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise SamplingInputError(f"{name}={value!r} must be a finite number")
    if window is None:
        start, end = window_steps(interpolation, steps)
    else:
        start, end = inclusive_window(window)
    return Guidance(
        jnp.float32(text_scale),
        jnp.float32(image_scale),
        jnp.float32(adapter_scale),
        jnp.int32(start),
        jnp.int32(end),
        jnp.bool_(use_bbox),
    )


def subject_phase(step: jax.Array, guidance: Guidance) -> jax.Array:
    """Whether step `step` uses the subjects (inside the interpolation window)."""
    return (step >= guidance.start_step) & (step < guidance.end_step)


def branch_inputs(
    latents: jax.Array, conditions: Conditions, phase: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, tuple[jax.Array, jax.Array] | None]:
    """UNet sample (3B, h, w, C+1), context (3B, L, D), grounding (3B, M, G) and grounding
    layout (token boxes (3B, M, 4), valid (3B, M), no token valid in the unconditional branch;
    None when the conditions have none) of the branches."""
    c = conditions
    mask = jnp.where(phase, c.location_mask, 0.0).astype(latents.dtype)
    zero = jnp.zeros_like(mask)
    prompt = jnp.where(phase, c.subject_context, c.plain_context)

    def stacked(c_value, i_value, u_value):
        branches = jnp.stack([c_value, i_value, u_value], axis=1)
        return branches.reshape(-1, *branches.shape[2:])

    sample = jnp.concatenate(
        [stacked(latents, latents, latents), stacked(mask, mask, zero)], axis=-1
    )
    context = stacked(prompt, c.negative_context, c.negative_context)
    grounding = stacked(c.grounding, c.grounding, c.null_grounding)
    layout = None
    if c.grounding_layout is not None:
        boxes, valid = c.grounding_layout
        layout = (stacked(boxes, boxes, boxes), stacked(valid, valid, jnp.zeros_like(valid)))
    return sample, context, grounding, layout


def combine_branches(eps: jax.Array, text_scale: jax.Array, image_scale: jax.Array) -> jax.Array:
    """eps (3B, ...) in branch order c, i, u per example → guided (B, ...)."""
    eps = eps.reshape(-1, NUM_BRANCHES, *eps.shape[1:])
    eps_c, eps_i, eps_u = eps[:, 0], eps[:, 1], eps[:, 2]
    return eps_u + text_scale * (eps_c - eps_i) + image_scale * (eps_i - eps_u)
