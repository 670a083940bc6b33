"""Seconds to build random parameters and to compile the SD 2 base UNet training step.

Parameters: `sdjax.models.init.init_module` (host-drawn) and, with `--jit_init`, the model's own
initialisers under `jax.jit` (what `nnx.jit`-style initialisation costs); diffusers' Flax UNet:
`init_weights`. Compilation: ahead of time, `jax.jit(step).lower(abstract arguments).compile()`
(no parameter is materialised), split into tracing + lowering and XLA compilation. The training
step is the one of `unet_step.py` (MSE + AdamW on every parameter). Each framework in its own
process; diffusers' Flax UNet needs `--flax_python` (a diffusers 0.39 venv).

`--load` also times `sdjax.weights.unet.load_unet` on a random diffusers UNet of the config,
written as safetensors to a temporary folder (3.5 GB for SD 2; deleted afterwards).

python benchmarks/compile_time.py [--config sd2|small] [--flax_python PY] [--jit_init] [--load]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Column, machine_description, print_errors, report, run_worker, seconds, table
from unet_step import (
    BATCH,
    CONFIGS,
    LEARNING_RATE,
    SEED,
    add_attention_block_flag,
    flax_apply,
    flax_unet,
    inputs_numpy,
    jax_step_functions,
    sdjax_apply,
    sdjax_inputs,
    sdjax_unet_config,
)

# issue 7: diffusers Flax 0.39.0 on this machine, SD 2 base, float32, medians of 5, run alone.
REFERENCE = {"sd2": {"compile_s": 22.5, "init_s": 46.0}, "small": {"compile_s": 23.8, "init_s": 33}}


def aot_compile(step, optimizer, abstract_params, inputs) -> dict:
    """Tracing + lowering and XLA compile times of the training step on abstract arguments."""
    import jax  # noqa: PLC0415

    x, t, context, target = (jax.ShapeDtypeStruct(a.shape, a.dtype) for a in inputs)
    opt_state = jax.eval_shape(optimizer.init, abstract_params)
    lower_s, lowered = seconds(
        lambda: step.lower(abstract_params, opt_state, x, t, context, target)
    )
    compile_s, compiled = seconds(lowered.compile)
    memory = compiled.memory_analysis()
    return {
        "lower_s": lower_s,
        "xla_compile_s": compile_s,
        "compile_s": lower_s + compile_s,
        "xla_temp_gib": memory.temp_size_in_bytes / 2**30,
    }


def worker_sdjax(args) -> dict:
    import jax  # noqa: PLC0415
    import optax  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415

    from sdjax.models.init import init_module  # noqa: PLC0415
    from sdjax.models.tracing import fast_tracing  # noqa: PLC0415
    from sdjax.models.unet import UNet  # noqa: PLC0415

    cfg = sdjax_unet_config(args)

    def build(rngs):
        return UNet(cfg, rngs=rngs)

    result = {}
    init_s, unet = seconds(lambda: init_module(build, SEED))
    result["init_s"] = init_s
    del unet
    if args.jit_init:
        with fast_tracing():
            jitted = jax.jit(lambda: nnx.split(build(nnx.Rngs(SEED)))[1])
            result["jit_init_s"], _ = seconds(lambda: jax.block_until_ready(jitted()))
    with fast_tracing():
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(SEED))))
    x, t, context, target, grounding, positions = sdjax_inputs(args, cfg)
    optimizer = optax.adamw(LEARNING_RATE)
    _, step = jax_step_functions(sdjax_apply(graphdef, grounding, positions), optimizer)
    result.update(aot_compile(step, optimizer, abstract, (x, t, context, target)))
    return result


def worker_flax(args) -> dict:
    import jax  # noqa: PLC0415
    import optax  # noqa: PLC0415

    unet = flax_unet(args)
    key = jax.random.PRNGKey(SEED)
    result = {}
    if args.flax_init:
        result["init_s"], _ = seconds(lambda: jax.block_until_ready(unet.init_weights(key)))
    abstract = jax.eval_shape(unet.init_weights, key)
    optimizer = optax.adamw(LEARNING_RATE)
    _, step = jax_step_functions(flax_apply(unet), optimizer)
    inputs = inputs_numpy(CONFIGS[args.config], BATCH[args.config])
    result.update(aot_compile(step, optimizer, abstract, inputs))
    return result


def write_diffusers_unet(args, folder: Path) -> None:
    """A randomly initialised diffusers UNet of the benchmark config, saved as safetensors."""
    import torch  # noqa: PLC0415
    from diffusers import UNet2DConditionModel  # noqa: PLC0415

    torch.manual_seed(SEED)
    UNet2DConditionModel(**CONFIGS[args.config]).save_pretrained(folder, safe_serialization=True)


def worker_load(args) -> dict:
    """Seconds for `sdjax.weights.unet.load_unet` to read a diffusers UNet folder (written first,
    in a temporary folder deleted afterwards; the file is in the page cache, as after a copy)."""
    import tempfile  # noqa: PLC0415

    import jax  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415

    from sdjax.weights.unet import load_unet  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as folder:
        write_s, _ = seconds(lambda: write_diffusers_unet(args, Path(folder)))
        size = sum(f.stat().st_size for f in Path(folder).iterdir()) / 2**30
        load_s, unet = seconds(
            lambda: jax.block_until_ready(nnx.state(load_unet(folder, in_channels=5)))
        )
    return {"write_s": write_s, "file_gib": size, "load_s": load_s}


WORKERS = {"sdjax": worker_sdjax, "flax": worker_flax, "load": worker_load}
COLUMNS = (
    Column("init_s", "build parameters s", "{:.1f}"),
    Column("jit_init_s", "jitted initialisers s", "{:.1f}"),
    Column("lower_s", "trace + lower s", "{:.1f}"),
    Column("xla_compile_s", "XLA compile s", "{:.1f}"),
    Column("compile_s", "compile s (total)", "{:.1f}"),
    Column("load_s", "load safetensors s", "{:.1f}"),
    Column("xla_temp_gib", "XLA temp GiB", "{:.2f}"),
    Column("peak_rss_gib", "peak RSS GiB", "{:.2f}"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sd2", choices=sorted(CONFIGS))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--remat", action="store_true")
    add_attention_block_flag(parser)
    parser.add_argument("--subject_diffusion", action="store_true")
    parser.add_argument("--jit_init", action="store_true", help="also time jitted initialisers")
    parser.add_argument("--flax_python", default="")
    parser.add_argument("--flax_init", action="store_true", help="also time Flax init_weights")
    parser.add_argument("--load", action="store_true", help="also time loading safetensors")
    parser.add_argument("--worker", default="", choices=["", *WORKERS])
    args = parser.parse_args()
    if args.worker:
        report(WORKERS[args.worker](args))
        return
    flags = ["--config", args.config, "--dtype", args.dtype]
    flags += ["--remat"] * args.remat + ["--subject_diffusion"] * args.subject_diffusion
    flags += ["--attention_block", str(args.attention_block)]
    rows = [("sdjax", run_worker(__file__, "sdjax", flags + ["--jit_init"] * args.jit_init))]
    if args.load:
        rows.append(("sdjax load_unet", run_worker(__file__, "load", flags)))
    if args.flax_python:
        flax_flags = flags + ["--flax_init"] * args.flax_init
        rows.append(("diffusers Flax", run_worker(__file__, "flax", flax_flags, args.flax_python)))
    rows.append(("diffusers Flax (issue 7 reference)", REFERENCE[args.config]))
    print(f"machine: {machine_description()}")
    print(
        f"UNet '{args.config}' training step (MSE + AdamW), batch {BATCH[args.config]}, "
        f"{args.dtype}, remat {args.remat}, subject_diffusion {args.subject_diffusion}"
    )
    print(table(rows, COLUMNS))
    ours = {**rows[0][1], **dict(rows).get("sdjax load_unet", {})}
    for key, target in (("init_s", 10.0), ("compile_s", 20.0), ("load_s", 10.0)):
        if key in ours:
            verdict = "meets" if ours[key] <= target else "misses"
            print(f"{key}: {ours[key]:.1f} s, {verdict} the ≤ {target:.0f} s target")
    print_errors(rows)


if __name__ == "__main__":
    main()
