"""Train Subject-Diffusion.

    python train.py                                    # tiny config on the bundled sample set
    python train.py --config=configs/sd2_base.py --workdir=runs/sd2
        --config.model.pretrained=PATH --config.model.image_encoder_path=PATH   (one line)

Re-running the same command resumes from the last checkpoint. Any config value can be overridden
with --config.SECTION.NAME=VALUE.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from data.build_sample import build_sample_records
from sdjax import export, trainer
from sdjax.compilation import add_xla_flags

REPO = Path(__file__).resolve().parent

config_flags.DEFINE_config_file(
    "config",
    str(REPO / "configs" / "tiny.py"),
    "Config file (a get_config() returning a ConfigDict).",
)
flags.DEFINE_string("workdir", None, "Run directory (default: the config's workdir).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    add_xla_flags()  # read when JAX starts its backend, below
    config = flags.FLAGS.config
    workdir = Path(flags.FLAGS.workdir or config.workdir)
    if not config.data.file_pattern:
        files = build_sample_records(workdir / "data")
        config.data.file_pattern = ",".join(files)
    result = trainer.train(config, workdir)
    print(f"trained to step {result.step}; run directory: {workdir}")
    if result.step >= config.train.num_steps:
        out = export.export_run(workdir, workdir / "export")
        print(f"exported for sampling: {out}")


if __name__ == "__main__":
    app.run(main)
