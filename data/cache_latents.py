r"""Cache VAE latents in sdjax training records, so training skips the VAE encoder.

    python data/cache_latents.py --config=configs/sd2_base.py \
        --config.model.pretrained=/models/stable-diffusion-2-base \
        --input='/data/sdd/sdd-train.tfrecord-*' --output_dir=/data/sdd-latents
    python train.py --config=configs/sd2_base.py ... \
        --config.data.file_pattern='/data/sdd-latents/*' \
        --config.data.crop=centred --config.data.cached_latents=true

Each record is read as the trainer's reader reads it, with the centred crop (`data.crop`), at
`data.resolution`; the frozen VAE of the config (`model.pretrained`, or the config's random
initialisation) encodes the crop, and the posterior's mean and log-variance are written into a
copy of the record (`schema.LATENT_MOMENTS`, float16). Records the reader would skip are copied
unchanged. Output files keep their input names; `--num_shards/--shard_index` split the files
between machines.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `data` and `sdjax` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import ConfigDict, config_flags  # noqa: E402
from tqdm import tqdm  # noqa: E402

from sdjax import sharding, trainer  # noqa: E402
from sdjax.input_pipeline import pipeline, schema  # noqa: E402
from sdjax.input_pipeline.reasons import Reason  # noqa: E402
from sdjax.models.vae import AutoencoderKL  # noqa: E402
from sdjax.weights.vae import load_vae  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
Encoder = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class CacheReport:
    cached: int = 0  # records written with latents
    copied: int = 0  # records the reader skips, copied without latents

    def add(self, other: CacheReport) -> None:
        self.cached += other.cached
        self.copied += other.copied


def centred_config(data: ConfigDict) -> ConfigDict:
    """The data config the cache is made with: centred crops, latents not yet read."""
    cfg = data.copy_and_resolve_references()
    cfg.crop, cfg.cached_latents = "centred", False
    return cfg


def read_centred(path: str, cfg: ConfigDict, batch_size: int) -> Iterator[tuple]:
    """Batches `(records, images, ok)` of one file in order: the serialized records, their
    centred crops as the reader makes them, and whether the reader would use them."""
    seed = tf.constant([cfg.seed, 0], tf.int64)

    def one(index: tf.Tensor, record: tf.Tensor):
        element = {
            "record": record,
            "file": tf.constant(path),
            "record_index": index,
            "file_reason": tf.constant(int(Reason.OK)),
        }
        example = pipeline.process_example(index, element, seed, cfg)
        return record, example["image"], example["_reason"] == int(Reason.OK)

    records = tf.data.TFRecordDataset(path).enumerate().map(one)
    return records.batch(batch_size).as_numpy_iterator()


def vae_encoder(vae: AutoencoderKL, batch_size: int) -> Encoder:
    """Images (n ≤ batch_size, R, R, 3) in [-1, 1] → moments (n, R/f, R/f, 2C), one compile."""

    @jax.jit
    def moments(images: jax.Array) -> jax.Array:
        posterior = vae.encode(images)
        return jnp.concatenate([posterior.mean, posterior.logvar], axis=-1)

    def encode(images: np.ndarray) -> np.ndarray:
        count = len(images)
        padded = np.zeros((batch_size, *images.shape[1:]), images.dtype)
        padded[:count] = images
        return np.asarray(moments(padded))[:count]

    return encode


def cache_file(
    source: str, target: Path, cfg: ConfigDict, encode: Encoder, batch_size: int
) -> CacheReport:
    """Writes `target`: every record of `source`, with latents where the reader uses it."""
    report = CacheReport()
    with tf.io.TFRecordWriter(str(target)) as writer:
        for records, images, ok in read_centred(source, cfg, batch_size):
            moments = encode(images[ok]) if ok.any() else None
            used = iter(range(int(ok.sum())))
            for record, keep in zip(records, ok, strict=True):
                if keep:
                    writer.write(schema.with_latents(record, moments[next(used)], cfg.resolution))
                    report.cached += 1
                else:
                    writer.write(record)
                    report.copied += 1
    return report


def load_frozen_vae(config: ConfigDict) -> AutoencoderKL:
    """The VAE training will use: the pretrained one, or the config's random initialisation."""
    if config.model.pretrained:
        return load_vae(config.model.pretrained)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    return trainer.init_model(config, mesh).vae


def cache_latents(
    config: ConfigDict,
    files: list[str],
    output_dir: Path,
    batch_size: int,
) -> CacheReport:
    """Caches latents for `files` into `output_dir` (same file names)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    cfg = centred_config(config.data)
    encode = vae_encoder(load_frozen_vae(config), batch_size)
    report = CacheReport()
    for path in tqdm(files, desc="caching latents", unit="file"):
        report.add(cache_file(path, output_dir / Path(path).name, cfg, encode, batch_size))
    return report


config_flags.DEFINE_config_file(
    "config", str(REPO / "configs" / "tiny.py"), "Training config (model and data sections)."
)
flags.DEFINE_string("input", None, "TFRecord files: glob(s), comma-separated.", required=True)
flags.DEFINE_string("output_dir", None, "Folder for the records with latents.", required=True)
flags.DEFINE_integer("batch_size", 8, "Images per VAE call.")
flags.DEFINE_integer("num_shards", 1, "Machines sharing the files.")
flags.DEFINE_integer("shard_index", 0, "This machine's share (0 ≤ index < num_shards).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if not 0 <= f.shard_index < f.num_shards:
        raise app.UsageError(f"--shard_index={f.shard_index} not in [0, {f.num_shards})")
    files = pipeline.list_files(f.input)[f.shard_index :: f.num_shards]
    report = cache_latents(f.config, files, Path(f.output_dir), f.batch_size)
    print(
        f"{report.cached} records with latents, {report.copied} copied without (the reader "
        f"skips them), {len(files)} files in {f.output_dir}"
    )


if __name__ == "__main__":
    app.run(main)
