"""Seconds per image of sampling: sdjax's pipeline (three-branch guidance) against diffusers'
PyTorch `StableDiffusionPipeline` (two-branch guidance) on the same UNet, VAE and text encoder
sizes, random weights on both sides (built locally).

sdjax runs `SubjectDiffusionPipeline.generate` with one subject (image encoder, grounding net and
fused text encoder once per batch, then every DDIM step runs the UNet on 3 × batch latents);
diffusers runs the UNet on 2 × batch latents per step. Each side in its own process; the first
call (compilation for sdjax, warm-up for PyTorch) is timed apart from the next `--repeats` calls.

python benchmarks/sample.py [--unet sd2|small] [--size 512] [--steps 50] [--batches 1,8]
On a CPU, e.g.: --unet small --size 256 --steps 10 --batches 1,2
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from common import (  # noqa: E402
    Column,
    machine_description,
    median_seconds,
    print_errors,
    report,
    run_worker,
    seconds,
    table,
    versions,
)
from unet_step import CONFIGS, SEED  # noqa: E402

PROMPT = "a photo of a dog on the beach"
GUIDANCE_TEXT = 7.5
VAE_BLOCKS = (128, 256, 512, 512)
VAE_FACTOR = 2 ** (len(VAE_BLOCKS) - 1)


def sdjax_config(args: argparse.Namespace):
    """The SD 2 base preset at `--size`, its UNet replaced by the benchmark's `--unet` config."""
    from configs import sd2_base  # noqa: PLC0415

    config = sd2_base.get_config()
    unet = dict(CONFIGS[args.unet], in_channels=5, sample_size=args.size // VAE_FACTOR)
    config.model.unet.update({k: v for k, v in unet.items() if k in config.model.unet})
    config.model.dtype = args.dtype
    config.model.remat = False
    config.data.resolution = args.size
    return config


def time_batches(generate: Callable[[int], Any], batches: list[int], repeats: int) -> dict:
    """First-call and median seconds per image of `generate(batch)` for each batch size."""
    result = {}
    for batch in batches:
        call = functools.partial(generate, batch)
        result[f"first_{batch}"], _ = seconds(call)
        result[f"per_image_{batch}"] = median_seconds(call, repeats, warmup=0) / batch
    return result


def worker_sdjax(args) -> dict:
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from sdjax.models.init import init_module  # noqa: PLC0415
    from sdjax.models.subject_diffusion import build_subject_diffusion  # noqa: PLC0415
    from sdjax.sampling.pipeline import SubjectDiffusionPipeline  # noqa: PLC0415
    from sdjax.sampling.subjects import Subject  # noqa: PLC0415

    config = sdjax_config(args)
    init_s, model = seconds(lambda: init_module(lambda r: build_subject_diffusion(config.model, r)))
    rng = np.random.default_rng(SEED)
    subject = Subject(
        image=rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        box=(0.2, 0.2, 0.8, 0.8),
        label="dog",
        layout=(0.1, 0.3, 0.6, 0.9),
    )
    pipelines = {}

    def generate(batch: int):
        if batch not in pipelines:
            pipelines.clear()
            pipelines[batch] = SubjectDiffusionPipeline(
                model, config, devices=jax.devices()[:1], batch_size=batch
            )
        return pipelines[batch].generate(
            PROMPT, [subject], num_images=batch, steps=args.steps, scheduler="ddim"
        )

    timings = time_batches(generate, args.batch_sizes, args.repeats)
    return {"init_s": init_s, **timings, "versions": versions("jax", "flax")}


def worker_torch(args) -> dict:
    import torch  # noqa: PLC0415
    from diffusers import (  # noqa: PLC0415
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel  # noqa: PLC0415

    from configs import sd2_base  # noqa: PLC0415
    from sdjax.tokenizer import load_tokenizer  # noqa: PLC0415

    torch.manual_seed(SEED)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    reference = sd2_base.get_config()
    text = reference.model.text_encoder

    def build():
        unet = UNet2DConditionModel(**dict(CONFIGS[args.unet], sample_size=args.size // VAE_FACTOR))
        vae = AutoencoderKL(
            block_out_channels=VAE_BLOCKS,
            down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCKS),
            up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCKS),
            layers_per_block=reference.model.vae.layers_per_block,
            latent_channels=4,
            sample_size=args.size,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(**text.to_dict(), projection_dim=1024))
        scheduler = DDIMScheduler(
            beta_start=reference.scheduler.beta_start,
            beta_end=reference.scheduler.beta_end,
            beta_schedule=reference.scheduler.beta_schedule,
            clip_sample=False,
            set_alpha_to_one=False,
        )
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=load_tokenizer(),
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(dtype=dtype)

    init_s, pipe = seconds(build)

    def generate(batch: int):
        return pipe(
            [PROMPT] * batch,
            height=args.size,
            width=args.size,
            num_inference_steps=args.steps,
            guidance_scale=GUIDANCE_TEXT,
            generator=torch.Generator().manual_seed(SEED),
            output_type="np",
        ).images

    timings = time_batches(generate, args.batch_sizes, args.repeats)
    return {"init_s": init_s, **timings, "versions": versions("torch", "diffusers")}


WORKERS = {"sdjax": worker_sdjax, "torch": worker_torch}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", default="sd2", choices=sorted(CONFIGS))
    parser.add_argument("--size", type=int, default=512, help="image height and width, px")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--peers", default="sdjax,torch")
    parser.add_argument("--worker", default="", choices=["", *WORKERS])
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batches.split(",") if b]
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        report(WORKERS[args.worker](args))
        return
    flags = [
        *("--unet", args.unet, "--size", str(args.size), "--steps", str(args.steps)),
        *("--batches", args.batches, "--dtype", args.dtype, "--repeats", str(args.repeats)),
    ]
    rows = [(name, run_worker(__file__, name, flags)) for name in args.peers.split(",") if name]
    columns = [Column("init_s", "build s", "{:.1f}")]
    for batch in args.batch_sizes:
        columns += [
            Column(f"first_{batch}", f"first call s, batch {batch}", "{:.1f}"),
            Column(f"per_image_{batch}", f"s/image, batch {batch}", "{:.2f}"),
        ]
    columns.append(Column("peak_rss_gib", "peak RSS GiB", "{:.2f}"))
    print(f"machine: {machine_description()}")
    print(
        f"UNet '{args.unet}', {args.size} px, {args.steps} DDIM steps, {args.dtype}; sdjax: "
        "three guidance branches + one subject; diffusers: two branches"
    )
    for name, result in rows:
        if "versions" in result:
            print(f"  {name}: {result['versions']}")
    print(table(rows, columns))
    results = dict(rows)
    for batch in args.batch_sizes:
        ours = results.get("sdjax", {}).get(f"per_image_{batch}")
        theirs = results.get("torch", {}).get(f"per_image_{batch}")
        if ours and theirs:
            print(
                f"batch {batch}: sdjax / diffusers = {ours / theirs:.2f}x per image "
                f"({ours / theirs * 2 / 3:.2f}x per UNet branch)"
            )
    print_errors(rows)


if __name__ == "__main__":
    main()
