"""Train Subject-Diffusion.

    python train.py                                    # the toy-subjects world, end to end
    python train.py --config=configs/tiny.py           # tiny model on the bundled photos
    python train.py --config=configs/sd2_base.py --workdir=runs/sd2
        --config.model.pretrained=PATH --config.model.image_encoder_path=PATH   (one line)

A config with a `world` section (configs/toy_world.py, the default) runs four cached stages in
the work directory: generate the world's records (world/), fit its VAE (vae/), pre-fit the image
encoder on the world's subjects (image_encoder/), then train Subject-Diffusion with both frozen.
Each stage is reused when its settings match and its files are intact, and rebuilt otherwise. Re-running the same command resumes from the last checkpoint.
Any config value can be overridden with --config.SECTION.NAME=VALUE.

One run at a time per work directory (a second one stops at once, naming the first). Exit codes:
0 trained (or resumed) to num_steps; 1 an error (one line on stderr); 2 a bad flag; 75 stopped by
SIGTERM or Ctrl-C with a checkpoint saved, so a scheduler can requeue the same command.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from sdjax import cli

if TYPE_CHECKING:
    from sdjax.input_pipeline.iterator import PipelineIterator

REPO = Path(__file__).resolve().parent

config_flags.DEFINE_config_file(
    "config",
    str(REPO / "configs" / "toy_world.py"),
    "Config file (a get_config() returning a ConfigDict).",
)
flags.DEFINE_string("workdir", None, "Run directory (default: the config's workdir).")


def prepare_toy_world(config: ConfigDict, workdir: Path) -> None:
    """The world's records, its fitted VAE and pre-fitted image encoder (cached stages under
    `config.stages_dir`, else the work directory), wired into the sections of `config`."""
    from data.toy_world import generate_world
    from sdjax.toy_world.references import WorldReferences
    from sdjax.training.encoder_fit import fit_image_encoder
    from sdjax.training.vae_fit import fit_vae

    stages = Path(config.stages_dir or workdir)
    world = generate_world(config.world, stages)
    config.data.file_pattern = ",".join(world.record_files)
    config.vae_fit.file_pattern = config.data.file_pattern
    fitted = fit_vae(config, stages / "vae")
    if not fitted.complete:
        print("the VAE fit was interrupted; run the same command to resume")
        raise SystemExit(cli.EXIT_PREEMPTED)
    print(f"VAE: held-out reconstruction error {fitted.final_mae:.4f} ({fitted.export_dir})")
    config.model.vae_path = str(fitted.export_dir)
    encoder = fit_image_encoder(config, stages / "image_encoder", WorldReferences(config))
    print(f"image encoder: held-out accuracy {encoder.accuracy} ({encoder.export_dir})")
    config.model.image_encoder_path = str(encoder.export_dir)


def sample_batches(config: ConfigDict, folder: Path) -> Callable[[ConfigDict], PipelineIterator]:
    """Points `config.data` at the bundled sample set's records in `folder`, and returns the
    trainer's reader that first builds them there (or finds them built). Building imports
    TensorFlow: in the trainer's input start, it loads while the step compiles."""
    from data.layout import shard_pattern
    from sdjax import trainer

    config.data.file_pattern = shard_pattern(folder)

    def make_batches(data: ConfigDict) -> PipelineIterator:
        from data.build_sample import build_sample_records

        build_sample_records(folder)
        return trainer.read_batches(data)

    return make_batches


@cli.one_line_errors
def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Imported here, not at the top, so that --help answers without loading JAX and TensorFlow.
    cli.quiet_tensorflow()
    from sdjax import export, trainer
    from sdjax.compilation import add_xla_flags, enable_compilation_cache
    from sdjax.training.workdir_lock import workdir_lock

    logging.set_verbosity(logging.WARNING)
    add_xla_flags()  # read when JAX starts its backend, below
    config = flags.FLAGS.config
    enable_compilation_cache(config.compilation_cache)
    workdir = Path(flags.FLAGS.workdir or config.workdir)
    # Every host of a multi-host run runs this; there process 0 locks, in `trainer.train`.
    single_host = not trainer.distributed_requested(config)
    with workdir_lock(workdir) if single_host else contextlib.nullcontext():
        make_batches = trainer.read_batches
        if "world" in config:
            prepare_toy_world(config, workdir)
        elif not config.data.file_pattern:
            make_batches = sample_batches(config, workdir / "data")
        result = trainer.train(config, workdir, make_batches)
        if result.preempted:
            print(
                f"stopped at step {result.step} with a checkpoint; run the same command to resume"
            )
            raise SystemExit(cli.EXIT_PREEMPTED)
        print(f"trained to step {result.step}; run directory: {workdir}")
        out = export.export_run(workdir, workdir / "export", overwrite=True)
        print(f"exported for sampling: {out}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_absl_flags)
