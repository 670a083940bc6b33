"""Where the cold start of the training step goes: model building, tracing, XLA compile per part.

With the persistent compilation cache off, from abstract parameters (nothing materialised but
where said), for the step of `trainer.build_run` on a config of `configs/`:

- building the model abstractly (`nnx.eval_shape`), and the run with its parameters drawn on the
  host and its optimizer state (`trainer.build_run`), fresh or to be restored (only the frozen
  parameters drawn: a resume);
- each part compiled alone as its own program of the step's shapes: VAE encode and CLIP vision
  (forward: frozen), fusion text encoder, grounding net + CLS projector and UNet with its
  attention maps (forward + backward to the trainable parameters), the AdamW update;
- the whole step (`trainer.abstract_run`), trace + lower and XLA compile.

The parts' sum against the whole says whether compiling frozen parts apart could pay.

python benchmarks/startup.py [--config tiny]
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from common import machine_description, seconds  # noqa: E402

from sdjax import compilation, trainer  # noqa: E402
from sdjax.models.subject_diffusion import part_configs  # noqa: E402
from sdjax.training.optimizer import make_optimizer  # noqa: E402


def part_losses(config) -> dict[str, tuple[Callable, bool]]:
    """name → (scalar function of (model, batch), differentiated?) for each part of the step."""
    parts = part_configs(config.model)
    s = config.model.grounding.max_subjects
    unet, text = parts["unet"], parts["text_encoder"]

    def vae(model, b):
        return model.vae.encode(b["image"]).mean.sum()

    def vision(model, b):
        cls, patches = model.image_encoder(
            b["subject_pixels"].reshape(-1, *b["subject_pixels"].shape[2:])
        )
        return cls.sum() + patches.sum()

    def text_encoder(model, b):
        embeds = jnp.ones((b["input_ids"].shape[0], s, text.hidden_size))
        return model.encode_prompt(
            b["input_ids"], embeds, b["placeholder_positions"], b["subject_valid"]
        ).sum()

    def grounding(model, b):
        n = b["subject_pixels"].shape[0]
        cls = jnp.ones((n * s, parts["image_encoder"].projection_dim))
        patches = jnp.ones(
            (n, s, parts["grounding"].num_patch_tokens, parts["grounding"].patch_dim)
        )
        return (
            model.grounding(patches, b["subject_boxes"], b["subject_valid"]).sum()
            + model.cls_projector(cls).sum()
        )

    def unet_maps(model, b):
        n, h = b["location_mask"].shape[:2]
        sample = jnp.ones((n, h, h, unet.in_channels))
        context = jnp.ones((n, b["input_ids"].shape[1], unet.cross_attention_dim))
        tokens = jnp.ones((n, s * parts["grounding"].num_patch_tokens, unet.grounding_dim))
        positions = jnp.concatenate([b["placeholder_positions"], b["entity_positions"]], 1)
        out, maps = model.unet(
            sample, jnp.ones((n,), jnp.int32), context, tokens, attention_positions=positions
        )
        return out.sum() + sum(m.sum() for m in maps)

    return {
        "VAE encode (forward)": (vae, False),
        "CLIP vision (forward)": (vision, False),
        "text encoder (fwd + bwd)": (text_encoder, True),
        "grounding + CLS projector (fwd + bwd)": (grounding, True),
        "UNet with maps (fwd + bwd)": (unet_maps, True),
    }


def compile_seconds(fn: Callable, *args) -> tuple[float, float]:
    """(trace + lower s, XLA compile s) of `jax.jit(fn)` on abstract `args`."""
    lower_s, lowered = seconds(lambda: jax.jit(fn).lower(*args))
    compile_s, _ = seconds(lowered.compile)
    return lower_s, compile_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help="a module of configs/")
    args = parser.parse_args()
    compilation.add_xla_flags()
    compilation.enable_compilation_cache("off")
    config = importlib.import_module(f"configs.{args.config}").get_config()
    config.mesh.num_devices = 1
    mesh = trainer.make_run_mesh(config)
    rows = []

    abstract_s, model = seconds(lambda: trainer.abstract_model(config))  # as training builds it
    rows.append(("abstract model", abstract_s, None))
    graphdef, params, frozen = trainer.split_trainable(model, config)
    batch = trainer.abstract_batch(config.data, mesh)
    for name, (loss, differentiated) in part_losses(config).items():

        def program(p, f, b, loss=loss, differentiated=differentiated):
            run = lambda p: loss(nnx.merge(graphdef, p, f), b)  # noqa: E731
            return jax.grad(run)(p) if differentiated else run(p)

        rows.append((name, *compile_seconds(program, params, frozen, batch)))
    optimizer = make_optimizer(config.optimizer)
    opt_state = jax.eval_shape(optimizer.init, params)
    rows.append(("AdamW update", *compile_seconds(optimizer.update, params, opt_state, params)))
    parts_total = sum(r[1] + r[2] for r in rows[1:])

    run = trainer.abstract_run(config, mesh)
    whole = seconds(lambda: run.step_fn.lower(run.state, run.frozen, batch))
    compile_s, _ = seconds(whole[1].compile)
    rows.append(("whole step", whole[0], compile_s))
    fresh_s, _ = seconds(lambda: trainer.build_run(config, mesh))
    rows.append(
        ("run built fresh: every parameter drawn, optimizer state (build_run)", fresh_s, None)
    )
    resume_s, _ = seconds(lambda: trainer.build_run(config, mesh, restoring=True))
    rows.append(("run built to resume: frozen parameters drawn only (restoring)", resume_s, None))

    print(f"machine: {machine_description()}")
    print(f"config {args.config}, batch {config.data.batch_size}, {config.model.dtype}, cache off")
    print("| part | trace + lower s | XLA compile s |\n|---|---|---|")
    for name, lower_s, xla_s in rows:
        xla = "–" if xla_s is None else f"{xla_s:.1f}"
        print(f"| {name} | {lower_s:.1f} | {xla} |")
    print(f"parts alone, total: {parts_total:.1f} s; whole step: {whole[0] + compile_s:.1f} s")


if __name__ == "__main__":
    main()
