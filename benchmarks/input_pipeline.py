"""Throughput of the sdjax input pipeline at the reference resolution, per host and per core.

Writes synthetic records shaped like the reference data (JPEG photos with an 800 px short side,
several entities with image-sized PNG masks, two of them passing the filters), reads them back
through `sdjax.input_pipeline` and reports examples/s with all cores and with one tf.data thread,
against the rate a training host consumes.

python benchmarks/input_pipeline.py [--resolution 512] [--steps_per_second 1.5] ...
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from sdjax import tokenizer as tok
from sdjax.input_pipeline import pipeline, schema

# Box fractions (x0, y0, x1, y1) of the image: the first two pass the filters; the third is too
# small and the fourth too large, as many detections are.
BOX_FRACTIONS = (
    (0.05, 0.15, 0.45, 0.85),
    (0.55, 0.25, 0.95, 0.9),
    (0.7, 0.05, 0.8, 0.15),
    (0.0, 0.0, 0.95, 0.95),
)
LABELS = ("dog", "cat", "ball", "grass")
CAPTION = "a dog and a cat playing with a ball on the grass"


def _photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random image with fine noise: JPEG sizes close to photographs'."""
    coarse = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    noise = rng.integers(-12, 13, (height, width, 3))
    return np.clip(smooth.astype(int) + noise, 0, 255).astype(np.uint8)


def _ellipse(box, height: int, width: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def synthetic_record(rng: np.random.Generator, height: int, width: int) -> bytes:
    """One encoded record: a JPEG photo and four entities with masks."""
    clip = tok.load_tokenizer()
    buffer = io.BytesIO()
    Image.fromarray(_photo(rng, height, width)).save(buffer, "JPEG", quality=90)
    entities = []
    for label, (fx0, fy0, fx1, fy1) in zip(LABELS, BOX_FRACTIONS, strict=True):
        box = (fx0 * width, fy0 * height, fx1 * width, fy1 * height)
        entities.append(
            schema.Entity(
                label=label,
                box=box,
                mask_png=schema.encode_mask_png(_ellipse(box, height, width)),
                clause_ids=tuple(tok.clause_ids(clip, label)),
                score=float(rng.uniform(0.35, 0.9)),
            )
        )
    example = schema.ImageExample(
        key=f"synthetic-{rng.integers(1 << 30)}",
        image_encoded=buffer.getvalue(),
        image_format="jpeg",
        height=height,
        width=width,
        caption=CAPTION,
        caption_ids=tuple(tok.caption_ids(clip, CAPTION)),
        entities=tuple(entities),
    )
    return schema.encode_example(example)


def write_records(folder: Path, count: int, height: int, width: int, shards: int) -> str:
    """`count` distinct records in `shards` files; returns their glob."""
    rng = np.random.default_rng(0)
    records = [synthetic_record(rng, height, width) for _ in range(count)]
    for shard in range(shards):
        with tf.io.TFRecordWriter(str(folder / f"bench-{shard}.tfrecord")) as writer:
            for record in records[shard::shards]:
                writer.write(record)
    return str(folder / "bench-*.tfrecord")


def measure(dataset: tf.data.Dataset, batch: int, warmup: int, batches: int) -> float:
    """Examples per second over `batches` batches after `warmup` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def one_thread(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The same pipeline restricted to a single tf.data thread (one core's worth)."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--subjects", type=int, default=2, help="max_subjects")
    parser.add_argument("--image_size", default="800x1067", help="HxW of the stored photos")
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="per-host batch read")
    parser.add_argument("--batches", type=int, default=12, help="timed batches")
    parser.add_argument("--background", default="random", choices=["white", "random"])
    parser.add_argument("--per_device_batch", type=int, default=8, help="reference: 8 per GPU")
    parser.add_argument("--devices_per_host", type=int, default=8)
    parser.add_argument(
        "--steps_per_second", type=float, default=1.5, help="reference: ~1.5 on A100-class GPUs"
    )
    args = parser.parse_args()
    height, width = (int(v) for v in args.image_size.split("x"))
    pipeline.hide_accelerators_from_tensorflow()

    with tempfile.TemporaryDirectory() as folder:
        pattern = write_records(Path(folder), args.records, height, width, shards=4)
        cfg = pipeline.default_config(args.resolution)
        cfg.update(
            file_pattern=pattern,
            batch_size=args.batch,
            max_subjects=args.subjects,
            background=args.background,
            shuffle_buffer=16,
        )
        dataset = pipeline.build_dataset(cfg, 0, 1)
        all_cores = measure(dataset, args.batch, warmup=3, batches=args.batches)
        per_core = measure(one_thread(dataset), args.batch, warmup=2, batches=args.batches // 2)

    cores = os.cpu_count()
    required = args.per_device_batch * args.devices_per_host * args.steps_per_second
    step_time = 1.0 / args.steps_per_second
    one_core_time = args.per_device_batch * args.devices_per_host / per_core
    print(
        f"machine: {cpu_name()}, {cores} cores; "
        f"tensorflow {tf.__version__}, python {platform.python_version()}"
    )
    print(
        f"records: {height}x{width} JPEG, {len(LABELS)} entities (2 kept); "
        f"output {args.resolution} px, {args.subjects} subjects, background {args.background}"
    )
    print(f"examples/s, all {cores} cores: {all_cores:.1f}")
    print(f"examples/s, one core:      {per_core:.1f}")
    print(
        f"required per host: {args.per_device_batch} x {args.devices_per_host} devices x "
        f"{args.steps_per_second} steps/s = {required:.0f} examples/s"
    )
    print(
        f"one core would spend {one_core_time:.2f} s per {step_time:.2f} s step "
        f"({100 * one_core_time / step_time:.0f}% of it): "
        f"{required / per_core:.1f} cores keep up"
    )


if __name__ == "__main__":
    main()
