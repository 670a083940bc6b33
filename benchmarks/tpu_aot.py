"""The SD 2 base training step compiled ahead of time for TPU slices, on a CPU host.

For each slice: the mesh and global batch of `SLICES` (FSDP over up to 16 chips, data parallel
over the rest; another slice takes the config's), the per-device argument and temporary bytes from `memory_analysis()` against the
chip's HBM, the flops of one device's program from `cost_analysis()`, and the lowering and
compile times. Nothing is allocated: the state is shapes and shardings only. Needs libtpu
(`pip install 'sdjax[tpu]'`).

The compiler's efforts default to the least (-1): at the default (0) the TPU compiler needs more
than 15 GB of host memory and 13 minutes for SD 2 base on even the 4-chip slice.

    python benchmarks/tpu_aot.py                         # SD 2 base on the three slices below
    python benchmarks/tpu_aot.py --slices=v5e:4x4 --config.mesh.fsdp=4 --config.data.batch_size=32
    python benchmarks/tpu_aot.py --config=configs/sd15.py --config.model.remat=False
"""

from __future__ import annotations

import copy
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the config files import `configs.common`

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sdjax.training import aot  # noqa: E402

# slice -> (mesh, global batch). v5e's 16 GiB needs the parameters and optimizer state of SD 2
# base sharded over all 4 chips of the small slice; the pods shard over 8 or 16 chips and replicate
# over the data axis, with SD 2 base's global batch of 256 (2 or 1 per chip).
SLICES = {
    "v5e:2x2": ({"data": 1, "fsdp": 4}, 8),
    "v5p:4x4x8": ({"data": 16, "fsdp": 8}, 256),
    "v5e:16x16": ({"data": 16, "fsdp": 16}, 256),
}

config_flags.DEFINE_config_file(
    "config", str(REPO / "configs" / "sd2_base.py"), "Config file of the model to compile."
)
flags.DEFINE_list("slices", list(SLICES), "TPU slices (topology names such as v5e:2x2).")
flags.DEFINE_float("exec_time_effort", -1.0, "XLA exec_time_optimization_effort, -1 to 1.")
flags.DEFINE_float("memory_fitting_effort", -1.0, "XLA memory_fitting_effort, -1 to 1.")


def gib(n: float) -> str:
    return f"{n / aot.GIB:.2f}"


def row(report: aot.StepReport) -> str:
    hbm = report.hbm_bytes
    share = f"{100 * report.peak_bytes / hbm:.0f}%" if hbm else "?"
    mesh = " x ".join(f"{k}={v}" for k, v in report.mesh.items())
    cells = (
        f"`{report.topology}` ({report.device_kind}, {report.num_devices} chips)",
        mesh,
        str(report.batch_size),
        gib(report.argument_bytes),
        gib(report.temp_bytes),
        gib(report.peak_bytes),
        f"{gib(hbm)} ({share})" if hbm else "?",
        f"{report.flops / 1e12:.1f}",
        f"{report.lower_seconds:.0f}",
        f"{report.compile_seconds:.0f}",
    )
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| slice | mesh | global batch | arguments GiB | temporaries GiB | peak GiB | HBM GiB "
    "(used) | TFLOP per chip per step | lower s | compile s |\n" + "|---" * 10 + "|"
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    base = flags.FLAGS.config
    options = {
        "exec_time_optimization_effort": flags.FLAGS.exec_time_effort,
        "memory_fitting_effort": flags.FLAGS.memory_fitting_effort,
    }
    print(f"jax {jax.__version__}, host {platform.processor() or platform.machine()}, {options}")
    print(HEADER, flush=True)
    for name in flags.FLAGS.slices:
        config = copy.deepcopy(base)
        if name in SLICES:
            mesh, batch = SLICES[name]
            config.mesh.update(mesh)
            config.data.batch_size = batch
        _, report = aot.compile_step(config, name, options)
        print(row(report), flush=True)


if __name__ == "__main__":
    app.run(main)
