"""Safetensors files mapped into memory: tensors are read-only NumPy views of the page cache.

Reading a 3.5 GB UNet with `safetensors.numpy.load_file` copies every byte once before any layout
change; a view costs nothing until the layout pass reads it, so the file is read exactly once, by
the copy that produces our layout.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

HEADER_LENGTH_BYTES = 8  # little-endian u64, then that many bytes of JSON
METADATA_KEY = "__metadata__"
DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class SafetensorsFormatError(ValueError):
    """A file is not a readable safetensors file; the message names the file and the reason."""


def map_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only view of the mapped file."""
    path = Path(path)
    with path.open("rb") as f:
        # The mapping outlives the file object; views keep it alive.
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if len(buffer) < HEADER_LENGTH_BYTES:
        raise SafetensorsFormatError(f"{path}: {len(buffer)} bytes, too short for a header")
    (header_length,) = struct.unpack("<Q", buffer[:HEADER_LENGTH_BYTES])
    start = HEADER_LENGTH_BYTES + header_length
    if start > len(buffer):
        raise SafetensorsFormatError(
            f"{path}: header of {header_length} bytes runs past the end ({len(buffer)} bytes)"
        )
    try:
        header = json.loads(bytes(buffer[HEADER_LENGTH_BYTES:start]))
    except ValueError as error:
        raise SafetensorsFormatError(f"{path}: header is not JSON ({error})") from None
    tensors = {}
    for name, entry in header.items():
        if name == METADATA_KEY:
            continue
        tensors[name] = _view(path, buffer, start, name, entry)
    return tensors


def _view(path: Path, buffer: mmap.mmap, start: int, name: str, entry: dict) -> np.ndarray:
    dtype_name, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype_name not in DTYPES:
        raise SafetensorsFormatError(
            f"{path}: {name} has dtype {dtype_name}; readable: {sorted(DTYPES)}"
        )
    dtype = np.dtype(DTYPES[dtype_name])
    count = int(np.prod(shape, dtype=np.int64))
    if end - begin != count * dtype.itemsize or start + end > len(buffer):
        raise SafetensorsFormatError(
            f"{path}: {name} ({dtype_name} {shape}) has bytes {begin}..{end}, which do not match "
            f"its shape or lie past the end of the file"
        )
    return np.frombuffer(buffer, dtype, count, offset=start + begin).reshape(shape)
