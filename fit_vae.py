"""Fit a VAE (sdjax's AutoencoderKL) on the images of sdjax TFRecords and export it.

    python fit_vae.py --data='/data/toy/sdd-train.tfrecord-*' --workdir=runs/vae
    python fit_vae.py --config=configs/toy_world.py --config.vae_fit.num_steps=50

The export (WORKDIR/export: config.json + diffusion_pytorch_model.safetensors, with the fitted
scaling_factor) loads with `sdjax.weights.load_vae` and diffusers' `AutoencoderKL`. Re-running the
same command resumes from the last checkpoint, or returns at once when the fit is finished.
Exit codes as train.py's: 75 when SIGTERM or Ctrl-C stopped the fit after a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from sdjax import cli

REPO = Path(__file__).resolve().parent

config_flags.DEFINE_config_file(
    "config",
    str(REPO / "configs" / "toy_world.py"),
    "Config file with `vae_fit` and `model.vae` sections.",
)
flags.DEFINE_string("workdir", "runs/vae", "Fit directory (checkpoints, logs, export/).")
flags.DEFINE_string(
    "data", None, "Comma-separated TFRecord globs (overrides vae_fit.file_pattern)."
)


@cli.one_line_errors
def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Imported here so that --help answers without loading JAX and TensorFlow.
    cli.quiet_tensorflow()
    from sdjax.compilation import add_xla_flags, enable_compilation_cache
    from sdjax.training.vae_fit import fit_vae
    from sdjax.training.workdir_lock import workdir_lock

    logging.set_verbosity(logging.WARNING)
    add_xla_flags()  # read when JAX starts its backend, below
    config = flags.FLAGS.config
    enable_compilation_cache(config.compilation_cache)
    if flags.FLAGS.data:
        config.vae_fit.file_pattern = flags.FLAGS.data
    if not config.vae_fit.file_pattern:
        raise app.UsageError("no images: pass --data or --config.vae_fit.file_pattern")
    with workdir_lock(flags.FLAGS.workdir):
        result = fit_vae(config, flags.FLAGS.workdir)
    if not result.complete:
        print(f"stopped at step {result.step} with a checkpoint; run the same command to resume")
        raise SystemExit(cli.EXIT_PREEMPTED)
    print(
        f"held-out reconstruction MAE {result.initial_mae:.4f} -> {result.final_mae:.4f} "
        f"after {result.step} steps; scaling_factor {result.scaling_factor:.5f}"
        + (" (finished earlier)" if result.reused else "")
    )
    print(f"exported: {result.export_dir}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_absl_flags)
