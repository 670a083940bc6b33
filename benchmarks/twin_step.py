"""The whole Subject-Diffusion training step, sdjax against its PyTorch twin, side by side.

sdjax: the step of `train_step.py --mode run` (compile from shapes, build the run, median step).
PyTorch: `torch_twin.py` (diffusers UNet with gated attention, transformers CLIP towers, the
grounding net, attention maps by processor) loading the same weights, exported by the sdjax worker
in the diffusers layout; forward + backward + clipping + AdamW on the same trainable set, on the
same synthetic batch shapes. Each framework runs in its own process (peak RSS is its own); the
workers run `--rounds` times, one after the other, and the table shows the medians over rounds of
each round's median step. The twin runs at PyTorch's default thread count and at one thread: on a
shared machine PyTorch's OpenMP threads wait for each other whenever another process holds a
core, so one thread can be the faster twin. sdjax's workers share a compilation cache made for
this run: the first round compiles cold, the others read it (both figures are printed).

python benchmarks/twin_step.py [--config tiny] [--batch N] [--steps 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from common import (  # noqa: E402
    Column,
    machine_description,
    median_seconds,
    print_errors,
    report,
    run_worker,
    table,
    versions,
)

WORKERS = ("sdjax", "torch", "torch-1thread")
CACHE = "jax-cache"  # in the run's temporary folder
COLUMNS = (
    Column("step_s", "step s (median)"),
    Column("first_s", "compile / first step s", "{:.1f}"),
    Column("images_per_s", "images/s", "{:.2f}"),
    Column("trainable_m", "trainable M", "{:.2f}"),
    Column("peak_rss_gib", "peak RSS GiB", "{:.2f}"),
)


def sdjax_worker(args: argparse.Namespace) -> dict:
    """Exports the seed's weights for the twin, then times the step as `train_step.py` does."""
    import jax  # noqa: PLC0415
    from train_step import load_config, run_mode  # noqa: PLC0415

    from sdjax import compilation, sharding, trainer  # noqa: PLC0415
    from sdjax.export import export_model  # noqa: PLC0415

    compilation.add_xla_flags()
    compilation.enable_compilation_cache(str(Path(args.export).parent / CACHE))
    config = load_config(args)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    if not (Path(args.export) / "unet").exists():
        export_model(trainer.init_model(config, mesh), config, args.export, fmt="diffusers")
    result = run_mode(config, args.steps)
    params = trainer.abstract_run(config, trainer.make_run_mesh(config)).state.params
    return {
        "step_s": result["step s"],
        "first_s": result["compile s"],
        "images_per_s": result["images/s"],
        "trainable_m": sum(x.size for x in jax.tree.leaves(params)) / 1e6,
        "loss": result["loss"],
    }


def torch_worker(args: argparse.Namespace, threads: int = 0) -> dict:
    """Loads the export into the twin and times its step (the first, untimed, reported apart);
    `threads` > 0 sets PyTorch's thread count."""
    import torch  # noqa: PLC0415
    import torch_twin  # noqa: PLC0415
    from train_step import load_config, synthetic_batch  # noqa: PLC0415

    if threads:
        torch.set_num_threads(threads)

    config = load_config(args)
    model = torch_twin.SubjectDiffusionTwin(args.export, config)
    params = model.set_trainable(config.train.full_unet)
    optimizer, schedule = torch_twin.make_optimizer(params, config)
    batch = torch_twin.torch_batch(synthetic_batch(config.data, config.data.batch_size))
    latent = config.data.resolution // config.data.latent_downsample
    shape = (config.data.batch_size, config.data.latent_channels, latent, latent)
    generator = torch.Generator().manual_seed(config.seed)
    metrics = {}

    def step():
        draws = torch_twin.Draws.sample(shape, config.scheduler.num_train_timesteps, generator)
        metrics.update(
            torch_twin.train_step(model, params, optimizer, schedule, batch, draws, config)
        )

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    step_s = median_seconds(step, args.steps, warmup=0)
    return {
        "step_s": step_s,
        "first_s": first,
        "images_per_s": config.data.batch_size / step_s,
        "trainable_m": sum(p.numel() for p in params) / 1e6,
        "loss": metrics["loss"],
        "threads": torch.get_num_threads(),
    }


def median_result(results: list[dict]) -> dict:
    """Per key, the median over the rounds that produced it."""
    good = [r for r in results if "error" not in r]
    if not good:
        return results[0]
    keys = {k for r in good for k, v in r.items() if isinstance(v, int | float)}
    return {k: statistics.median(r[k] for r in good if k in r) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help="a module of configs/")
    parser.add_argument("--batch", type=int, default=0, help="global batch (0: the config's)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per worker")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each worker")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--export", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype, args.remat = "", None  # float32 and the config's remat, as the twin runs
    if args.worker:
        workers = {
            "sdjax": sdjax_worker,
            "torch": torch_worker,
            "torch-1thread": lambda a: torch_worker(a, threads=1),
        }
        report(workers[args.worker](args))
        return

    common = ["--config", args.config, "--batch", str(args.batch), "--steps", str(args.steps)]
    runs: dict[str, list[dict]] = {name: [] for name in WORKERS}
    with tempfile.TemporaryDirectory() as export:
        for _ in range(args.rounds):
            for name in WORKERS:  # sdjax first: it writes the export
                runs[name].append(
                    run_worker(__file__, name, [*common, "--export", str(Path(export) / "m")])
                )
    rows = [(name, median_result(results)) for name, results in runs.items()]
    print(f"machine: {machine_description()}")
    print(f"versions: {versions('jax', 'flax', 'torch', 'diffusers', 'transformers')}")
    print(f"config {args.config}, batch {args.batch or 'of the config'}, float32, CPU")
    print(f"{args.rounds} rounds of {args.steps} timed steps; step times per round:")
    for name, results in runs.items():
        print(f"  {name}: " + ", ".join(f"{r.get('step_s', float('nan')):.3f}" for r in results))
    compiles = ", ".join(f"{r.get('first_s', float('nan')):.1f}" for r in runs["sdjax"])
    print(f"sdjax compile s per round (first cold, then from the cache): {compiles}")
    print(table(rows, COLUMNS))
    ours = rows[0][1]
    for name, twin in rows[1:]:
        if ours.get("step_s") and twin.get("step_s"):
            print(
                f"sdjax / {name}: step {ours['step_s'] / twin['step_s']:.2f}x, "
                f"peak RSS {ours['peak_rss_gib'] / twin['peak_rss_gib']:.2f}x"
            )
    print_errors([(f"{name} #{i}", r) for name, rs in runs.items() for i, r in enumerate(rs)])


if __name__ == "__main__":
    main()
