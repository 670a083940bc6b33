"""The full Subject-Diffusion training step: images/s, compile time, memory and (on GPU) MFU.

The step of `sdjax.trainer.build_run` (VAE encode, CLIP vision, fusion text encoder, grounding net,
UNet with attention maps, both losses, AdamW on the trainable set) on synthetic batches shaped by
`sdjax.input_pipeline.pipeline.output_signature(config.data)`, random weights.

  --mode run: compile the step from shapes (`trainer.abstract_run`), then build the run
      (`trainer.build_run`: parameter init + sharding), time `--steps` steps (median), peak RSS
      of this process.
  --mode aot: compile only, from abstract parameters (`trainer.abstract_run`, nothing
      materialised): compile time and XLA's memory figures for configurations too large to run
      here (SD 2 base on a CPU).

MFU = flops of one step from XLA's cost analysis ÷ (step time × the device's peak bf16 flops),
printed where the device's peak is known (GPUs, TPUs).

python benchmarks/train_step.py [--config tiny|sd2_base] [--mode run|aot] [--batch N]
    [--dtype float32|bfloat16] [--remat | --no-remat] [--steps 5] [--cached_latents]
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from common import machine_description, median_seconds, peak_rss_gib, seconds  # noqa: E402

from sdjax import compilation, sharding, trainer  # noqa: E402
from sdjax.input_pipeline import pipeline  # noqa: E402

# Dense bfloat16 peak flops per device (vendor figures), matched against `device_kind`.
PEAK_BF16_FLOPS = {
    "h200": 989.4e12,
    "h100": 989.4e12,
    "a100": 312e12,
    "l4": 121e12,
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v6": 918e12,
}
MAX_SUBJECT_TOKEN = 20  # synthetic placeholder/entity positions fall in the first tokens


def peak_flops(device: jax.Device) -> float | None:
    kind = device.device_kind.lower()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in kind), None)


def synthetic_batch(data_config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch with the reader's shapes and dtypes: plausible values, every subject present."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in pipeline.output_signature(data_config).items():
        shape, dtype = (batch, *spec.shape.as_list()), spec.dtype.as_numpy_dtype
        if name == "subject_boxes":
            corners = np.sort(rng.uniform(0, 1, (*shape[:-1], 2, 2)), axis=-2)
            value = corners.transpose(0, 1, 3, 2).reshape(shape)  # (x0, y0, x1, y1)
        elif "mask" in name:
            value = rng.uniform(size=shape) > 0.5
        elif dtype == np.bool_:
            value = np.full(shape, name == "subject_valid")
        elif np.issubdtype(dtype, np.integer):
            value = rng.integers(1, MAX_SUBJECT_TOKEN, shape)
        else:
            value = rng.uniform(-1, 1, shape)
        out[name] = np.asarray(value, dtype)
    return out


def load_config(args: argparse.Namespace):
    config = importlib.import_module(f"configs.{args.config}").get_config()
    config.data.batch_size = args.batch or config.data.batch_size
    config.model.dtype = args.dtype or config.model.dtype
    if args.remat is not None:
        config.model.remat = args.remat
    if args.cached_latents:  # the records hold VAE moments: no encoder in the step
        config.data.cached_latents = True
        config.data.crop = "centred"
    config.mesh.num_devices = 1
    return config


def cost_flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else None
    return analysis.get("flops") if analysis else None


def memory_figures(compiled) -> dict[str, float]:
    memory = compiled.memory_analysis()
    return {
        "arguments GiB": memory.argument_size_in_bytes / 2**30,
        "outputs GiB": memory.output_size_in_bytes / 2**30,
        "temporaries GiB": memory.temp_size_in_bytes / 2**30,
        "aliased GiB": memory.alias_size_in_bytes / 2**30,
    }


def run_mode(config, steps: int) -> dict:
    """Compile the step from shapes first (the compiler's memory is free again before any
    parameter exists), then build the run as training does and time the step."""
    mesh = trainer.make_run_mesh(config)
    abstract = trainer.abstract_run(config, mesh)
    compile_s, compiled = seconds(lambda: trainer.compile_step(abstract, config, mesh))
    build_s, run = seconds(lambda: trainer.build_run(config, mesh))
    batch = trainer.global_batch(
        synthetic_batch(config.data, config.data.batch_size), sharding.batch_sharding(mesh)
    )
    state = [run.state]

    def step():
        state[0], metrics = compiled(state[0], run.frozen, batch)
        jax.block_until_ready(metrics)

    step_s = median_seconds(step, steps)
    loss = float(jax.device_get(compiled(state[0], run.frozen, batch)[1]["loss"]))
    return {
        "build run s": build_s,
        "compile s": compile_s,
        "step s": step_s,
        "images/s": config.data.batch_size / step_s,
        "flops": cost_flops(compiled),
        "loss": loss,
        **memory_figures(compiled),
        "peak RSS GiB": peak_rss_gib(),
    }


def aot_mode(config) -> dict:
    """Compile the same step from abstract parameters (`trainer.abstract_run`)."""
    mesh = trainer.make_run_mesh(config)
    abstract_s, run = seconds(lambda: trainer.abstract_run(config, mesh))
    batch = trainer.abstract_batch(config.data, mesh)
    lower_s, lowered = seconds(lambda: run.step_fn.lower(run.state, run.frozen, batch))
    compile_s, compiled = seconds(lowered.compile)
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree)) / 1e6  # noqa: E731
    return {
        "abstract model s": abstract_s,
        "trace + lower s": lower_s,
        "XLA compile s": compile_s,
        "compile s": lower_s + compile_s,
        "trainable params M": count(run.state.params),
        "frozen params M": count(run.frozen),
        "flops": cost_flops(compiled),
        **memory_figures(compiled),
        "peak RSS GiB": peak_rss_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help="a module of configs/")
    parser.add_argument("--mode", default="run", choices=["run", "aot"])
    parser.add_argument("--batch", type=int, default=0, help="global batch (0: the config's)")
    parser.add_argument("--dtype", default="", help="compute dtype (default: the config's)")
    parser.add_argument("--remat", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--cached_latents",
        action="store_true",
        help="batches carry cached VAE moments (data/cache_latents.py): the step skips the encoder",
    )
    args = parser.parse_args()
    compilation.add_xla_flags()  # as train.py does
    config = load_config(args)
    result = run_mode(config, args.steps) if args.mode == "run" else aot_mode(config)
    device = jax.devices()[0]
    peak = peak_flops(device)
    if args.mode == "run" and peak and result["flops"]:
        result["MFU %"] = 100 * result["flops"] / (result["step s"] * peak)
    print(f"machine: {machine_description()}; device {device.device_kind}")
    print(
        f"config {args.config}, batch {config.data.batch_size}, {config.data.resolution} px, "
        f"{config.model.dtype}, remat {config.model.remat}, mode {args.mode}, "
        f"cached latents {config.data.cached_latents}"
    )
    print("| measure | value |\n|---|---|")
    for key, value in result.items():
        shown = "–" if value is None else f"{value:.4g}" if isinstance(value, float) else value
        print(f"| {key} | {shown} |")
    if peak is None:
        print(f"MFU: no peak bf16 figure for {device.device_kind}")


if __name__ == "__main__":
    main()
