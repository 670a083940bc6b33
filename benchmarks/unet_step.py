"""The sdjax UNet against diffusers' UNet2DConditionModel (PyTorch, and Flax where installed).

Same config, batch and dtype on both sides, random weights: forward time, training step time
(forward + backward + AdamW on every parameter, MSE to a random target) and, for the JAX sides,
compile and parameter-building time. Each framework runs in its own process (peak RSS = that
process's `ru_maxrss` after its forward and training steps; the JAX sides also report XLA's
buffer sizes of the compiled step). Medians of `--repeats` runs after one warm-up.

python benchmarks/unet_step.py [--config small|sd2] [--dtype float32|bfloat16] [--repeats 5]
    [--flax_python /path/to/venv/bin/python]   # diffusers 0.39 Flax UNet, in its own venv
    [--remat] [--memory_scheduler] [--peers sdjax,torch,flax] [--forward_only]

The UNet compared is the plain Stable Diffusion one (4 input channels, no grounding adapter, no
attention maps): the parameters diffusers has. `--subject_diffusion` adds sdjax's 5th input
channel, adapters (with grounding tokens) and attention maps, with no peer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    Column,
    machine_description,
    median_seconds,
    print_errors,
    ratio_line,
    report,
    run_worker,
    seconds,
    table,
    versions,
)

_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
# diffusers UNet2DConditionModel arguments; heads of 64 channels.
CONFIGS = {
    "small": dict(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        down_block_types=_DOWN,
        up_block_types=_UP,
        attention_head_dim=(2, 4, 8, 8),
        cross_attention_dim=1024,
        use_linear_projection=True,
    ),
    "sd2": dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=_DOWN,
        up_block_types=_UP,
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
    ),
}
BATCH = {"small": 2, "sd2": 1}
TEXT_LENGTH = 77
GROUNDING_TOKENS = 2 * 257  # two subjects of 256 patches + CLS (ViT-H/14 at 224 px)
NUM_TRAIN_TIMESTEPS = 1000
LEARNING_RATE = 1e-5
SEED = 0


def inputs_numpy(config: dict, batch: int):
    """Random latents (NCHW), timesteps, text context and target, identical for every framework."""
    import numpy as np  # noqa: PLC0415

    rng = np.random.default_rng(SEED)
    size, channels = config["sample_size"], config["in_channels"]
    return (
        rng.standard_normal((batch, channels, size, size), dtype=np.float32),
        rng.integers(0, NUM_TRAIN_TIMESTEPS, (batch,)).astype(np.int32),
        rng.standard_normal((batch, TEXT_LENGTH, config["cross_attention_dim"]), dtype=np.float32),
        rng.standard_normal((batch, config["out_channels"], size, size), dtype=np.float32),
    )


def sdjax_unet_config(args: argparse.Namespace):
    """Our `UNetConfig` equal to the diffusers config (plus Subject-Diffusion's parts if asked)."""
    import jax.numpy as jnp  # noqa: PLC0415

    from sdjax.models.unet import UNetConfig  # noqa: PLC0415

    config = dict(CONFIGS[args.config])
    overrides = dict(
        dtype=jnp.dtype(args.dtype),
        remat=args.remat,
        attention_block=args.attention_block,
        use_adapter=False,
    )
    if args.subject_diffusion:
        config["in_channels"] = 5
        overrides["use_adapter"] = True
    else:
        overrides["attention_map_factors"] = ()
    return UNetConfig.from_diffusers(config, **overrides)


def sdjax_inputs(args: argparse.Namespace, cfg):
    """(x, t, context, target, grounding, positions) for our UNet: NHWC, extras if asked."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    x, t, context, target = inputs_numpy(CONFIGS[args.config], BATCH[args.config])
    x, target = x.transpose(0, 2, 3, 1), target.transpose(0, 2, 3, 1)
    if not args.subject_diffusion:
        return x, t, context, target, None, None
    x = jnp.concatenate([x, jnp.ones_like(x[..., :1])], axis=-1)
    grounding = jax.random.normal(jax.random.key(SEED), (x.shape[0], GROUNDING_TOKENS, 1024))
    positions = jnp.tile(jnp.array([[3, 5, 4, 6]], jnp.int32), (x.shape[0], 1))
    return x, t, context, target, grounding.astype(cfg.dtype), positions


def jax_step_functions(apply, optimizer):
    """`(forward, train_step)` for a JAX model `apply(params, x, t, context)`: MSE + AdamW."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    import optax  # noqa: PLC0415

    def train_step(params, opt_state, x, t, context, target):
        def loss_fn(p):
            return jnp.mean((apply(p, x, t, context) - target) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(apply), jax.jit(train_step, donate_argnums=(0, 1))


def sdjax_apply(graphdef, grounding, positions):
    """Our UNet as `apply(params, x, t, context)`; with attention maps their mean joins the output."""
    from flax import nnx  # noqa: PLC0415

    def apply(params, x, t, context):
        out = nnx.merge(graphdef, params)(x, t, context, grounding, attention_positions=positions)
        return out if positions is None else out[0] + sum(m.mean() for m in out[1])

    return apply


def time_jax(params, forward, step, optimizer, inputs, repeats: int, train: bool = True) -> dict:
    """Compile (ahead of time), then median forward and training-step times of a JAX model."""
    import jax  # noqa: PLC0415

    x, t, context, target = inputs
    fwd_compile_s, fwd_compiled = seconds(lambda: forward.lower(params, x, t, context).compile())
    fwd_s = median_seconds(lambda: fwd_compiled(params, x, t, context).block_until_ready(), repeats)
    result = {
        "params_m": sum(p.size for p in jax.tree.leaves(params)) / 1e6,
        "fwd_compile_s": fwd_compile_s,
        "fwd_s": fwd_s,
    }
    if not train:
        return result
    opt_state = optimizer.init(params)
    compile_s, compiled = seconds(
        lambda: step.lower(params, opt_state, x, t, context, target).compile()
    )
    memory = compiled.memory_analysis()
    state = [params, opt_state]

    def run_step():
        state[0], state[1], loss = compiled(state[0], state[1], x, t, context, target)
        loss.block_until_ready()

    train_s = median_seconds(run_step, repeats)
    return {
        **result,
        "compile_s": compile_s,
        "train_s": train_s,
        "xla_temp_gib": memory.temp_size_in_bytes / 2**30,
        "xla_args_gib": memory.argument_size_in_bytes / 2**30,
    }


def worker_sdjax(args) -> dict:
    """Our UNet: host-drawn random parameters, AOT compile, jitted forward and training step."""
    import optax  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415

    from sdjax.compilation import add_xla_flags  # noqa: PLC0415
    from sdjax.models.init import init_module  # noqa: PLC0415
    from sdjax.models.unet import UNet  # noqa: PLC0415

    if args.memory_scheduler:
        add_xla_flags()  # before the first array starts JAX's backend
    cfg = sdjax_unet_config(args)
    x, t, context, target, grounding, positions = sdjax_inputs(args, cfg)
    init_s, unet = seconds(lambda: init_module(lambda rngs: UNet(cfg, rngs=rngs), SEED))
    graphdef, params = nnx.split(unet)
    del unet
    optimizer = optax.adamw(LEARNING_RATE)
    forward, step = jax_step_functions(sdjax_apply(graphdef, grounding, positions), optimizer)
    inputs = (x, t, context, target)
    timings = time_jax(
        params, forward, step, optimizer, inputs, args.repeats, not args.forward_only
    )
    return {"init_s": init_s, **timings, "versions": versions("jax", "flax", "optax")}


def worker_torch(args) -> dict:
    """diffusers' PyTorch UNet2DConditionModel, eager, SDPA attention."""
    import torch  # noqa: PLC0415
    from diffusers import UNet2DConditionModel  # noqa: PLC0415

    torch.manual_seed(SEED)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    config = CONFIGS[args.config]
    init_s, unet = seconds(lambda: UNet2DConditionModel(**config).to(dtype))
    if args.remat:
        unet.enable_gradient_checkpointing()
    x, t, context, target = (torch.from_numpy(a) for a in inputs_numpy(config, BATCH[args.config]))
    x, context, target = x.to(dtype), context.to(dtype), target.to(dtype)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)

    def forward():
        with torch.no_grad():
            unet(x, t, context).sample.sum().item()

    def train_step():
        loss = torch.nn.functional.mse_loss(unet(x, t, context).sample, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()

    unet.eval()
    fwd_s = median_seconds(forward, args.repeats)
    unet.train()
    train_s = None if args.forward_only else median_seconds(train_step, args.repeats)
    return {
        "params_m": sum(p.numel() for p in unet.parameters()) / 1e6,
        "init_s": init_s,
        "fwd_s": fwd_s,
        "train_s": train_s,
        "versions": versions("torch", "diffusers") + f", {torch.get_num_threads()} threads",
    }


def flax_unet(args: argparse.Namespace):
    """diffusers' Flax UNet (diffusers ≤ 0.39, linen) at the benchmark config."""
    import jax.numpy as jnp  # noqa: PLC0415
    from diffusers import FlaxUNet2DConditionModel  # noqa: PLC0415

    if args.remat:
        raise ValueError("diffusers' Flax UNet has no gradient checkpointing option")
    return FlaxUNet2DConditionModel(**CONFIGS[args.config], dtype=jnp.dtype(args.dtype))


def flax_apply(unet):
    def apply(params, x, t, context):
        return unet.apply({"params": params}, x, t, context).sample

    return apply


def worker_flax(args) -> dict:
    """diffusers' Flax UNet, jitted the same way as ours; run with `--flax_python`."""
    import jax  # noqa: PLC0415
    import optax  # noqa: PLC0415

    unet = flax_unet(args)
    init_s, params = seconds(
        lambda: jax.block_until_ready(unet.init_weights(jax.random.PRNGKey(SEED)))
    )
    inputs = inputs_numpy(CONFIGS[args.config], BATCH[args.config])
    optimizer = optax.adamw(LEARNING_RATE)
    forward, step = jax_step_functions(flax_apply(unet), optimizer)
    timings = time_jax(
        params, forward, step, optimizer, inputs, args.repeats, not args.forward_only
    )
    return {"init_s": init_s, **timings, "versions": versions("jax", "flax", "diffusers")}


WORKERS = {"sdjax": worker_sdjax, "torch": worker_torch, "flax": worker_flax}
COLUMNS = (
    Column("params_m", "params M", "{:.0f}"),
    Column("init_s", "init s", "{:.1f}"),
    Column("compile_s", "compile s (train)", "{:.1f}"),
    Column("fwd_s", "fwd s"),
    Column("train_s", "train step s"),
    Column("peak_rss_gib", "peak RSS GiB", "{:.2f}"),
    Column("xla_temp_gib", "XLA temp GiB", "{:.2f}"),
)


def add_attention_block_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--attention_block", type=int, default=0, help="sdjax self-attention block (tokens)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small", choices=sorted(CONFIGS))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--remat", action="store_true", help="gradient checkpointing everywhere")
    parser.add_argument(
        "--memory_scheduler",
        action="store_true",
        help="sdjax with XLA:CPU's memory-minimising scheduler, as train.py runs (SD 2 on 24 GB)",
    )
    add_attention_block_flag(parser)
    parser.add_argument("--peers", default="sdjax,torch,flax")
    parser.add_argument("--flax_python", default="", help="python of a diffusers 0.39 venv")
    parser.add_argument("--subject_diffusion", action="store_true")
    parser.add_argument(
        "--forward_only", action="store_true", help="no training step (SD 2 on a 24 GB host)"
    )
    parser.add_argument("--worker", default="", choices=["", *WORKERS])
    return parser.parse_args()


def forwarded(args: argparse.Namespace) -> list[str]:
    """The command-line flags a worker needs."""
    flags = ["--config", args.config, "--dtype", args.dtype, "--repeats", str(args.repeats)]
    flags += ["--remat"] * args.remat + ["--subject_diffusion"] * args.subject_diffusion
    flags += ["--memory_scheduler"] * args.memory_scheduler
    flags += ["--attention_block", str(args.attention_block)]
    return flags + ["--forward_only"] * args.forward_only


def main() -> None:
    args = parse_args()
    if args.worker:
        report(WORKERS[args.worker](args))
        return
    peers = [p for p in args.peers.split(",") if p]
    if args.subject_diffusion:
        peers = ["sdjax"]
    if "flax" in peers and not args.flax_python:
        print("no --flax_python: skipping diffusers' Flax UNet", file=sys.stderr)
        peers.remove("flax")
    rows = []
    for name in peers:
        python = args.flax_python if name == "flax" else None
        rows.append((name, run_worker(__file__, name, forwarded(args), python=python)))
    batch = BATCH[args.config]
    print(f"machine: {machine_description()}")
    print(
        f"UNet '{args.config}', batch {batch}, {args.dtype}, remat {args.remat}, "
        f"subject_diffusion {args.subject_diffusion}; medians of {args.repeats}"
    )
    for name, result in rows:
        if "versions" in result:
            print(f"  {name}: {result['versions']}")
    print(table(rows, COLUMNS))
    results = dict(rows)
    ours = results.get("sdjax", {})
    others = {k: v for k, v in results.items() if k != "sdjax"}
    for key, name in (("fwd_s", "forward"), ("train_s", "train step")):
        print(ratio_line(name, ours.get(key), {k: v.get(key) for k, v in others.items()}))
    print_errors(rows)


if __name__ == "__main__":
    main()
