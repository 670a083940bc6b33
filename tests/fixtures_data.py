"""Small on-disk inputs for the builder tests: images, COCO files, webdataset tars, manifests."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from sdjax.input_pipeline import schema


def image_bytes(width: int, height: int, seed: int, fmt: str = "JPEG") -> bytes:
    """A small random RGB image, encoded."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    """A single-channel PNG of a uint8 array (`mode="P"` writes a palette image)."""
    image = Image.fromarray(array.astype(np.uint8))
    if mode == "P":
        image = image.convert("P")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def rect_mask(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """A boolean mask that is True on the pixel rectangle x0 <= x < x1, y0 <= y < y1."""
    mask = np.zeros((height, width), bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE of a mask: run lengths over column-major pixels, zeros first."""
    flat = mask.T.reshape(-1).astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return [0, *runs] if flat[0] else runs


def rle_string(counts: list[int]) -> str:
    """COCO compressed RLE text of run lengths (the inverse of the decoder under test)."""
    chars = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        while True:
            chunk = value & 0x1F
            value >>= 5
            more = value != -1 if chunk & 0x10 else value != 0
            chars.append(chr(48 + (chunk | 0x20 if more else chunk)))
            if not more:
                break
    return "".join(chars)


def write_coco(root: Path, images: list[dict], annotations: list[dict], captions: dict) -> tuple:
    """COCO instances + captions files and the images; returns (instances, captions, image_dir).

    `images`: dicts with `id`, `file_name`, `width`, `height` and `data` (the file's bytes).
    `captions`: image id -> list of captions.
    """
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for image in images:
        (image_dir / image["file_name"]).write_bytes(image["data"])
        entries.append({k: v for k, v in image.items() if k != "data"})
    names = sorted({a["category"] for a in annotations})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    instances = [
        {
            "id": i + 1,
            "category_id": names.index(a["category"]) + 1,
            "iscrowd": 0,
            **{k: v for k, v in a.items() if k != "category"},
        }
        for i, a in enumerate(annotations)
    ]
    caption_entries = [
        {"id": 100 * image_id + j, "image_id": image_id, "caption": text}
        for image_id, texts in captions.items()
        for j, text in enumerate(texts)
    ]
    instances_path, captions_path = root / "instances_t.json", root / "captions_t.json"
    instances_path.write_text(
        json.dumps({"images": entries, "annotations": instances, "categories": categories})
    )
    captions_path.write_text(json.dumps({"images": entries, "annotations": caption_entries}))
    return str(instances_path), str(captions_path), str(image_dir)


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> str:
    """A webdataset tar: each sample's files as `{key}.{extension}`, in order."""
    with tarfile.open(path, "w") as archive:
        for key, files in samples:
            for extension, data in files.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                info.mtime = 0
                archive.addfile(info, io.BytesIO(data))
    return str(path)


def write_manifest(path: Path, lines: list[dict | str]) -> str:
    """A JSONL manifest; a str line is written verbatim."""
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def read_records(files: list[str]) -> list[dict]:
    """Every record of the shards, parsed with the contract's feature spec, as numpy values."""
    dataset = tf.data.TFRecordDataset(files).map(
        lambda r: tf.io.parse_single_example(r, schema.FEATURE_SPEC)
    )
    return list(dataset.as_numpy_iterator())


def by_key(records: list[dict]) -> dict[str, dict]:
    return {r["image/key"].decode(): r for r in records}
