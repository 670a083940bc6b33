"""Reading safetensors files by memory map, and the layout change of PyTorch kernels."""

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from sdjax.models.init import aligned_empty
from sdjax.weights.core import TRANSPOSE_TILE, to_hwio, to_nnx_layout
from sdjax.weights.mapped import SafetensorsFormatError, map_safetensors


@pytest.fixture(scope="module")
def tensors():
    rng = np.random.default_rng(0)
    return {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "bf16": rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "u8": np.arange(4, dtype=np.uint8),
        "bool": np.array([True, False]),
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.array(2.5, np.float32),
    }


def test_mapped_tensors_equal_safetensors_reader(tensors, tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors.numpy.save_file(tensors, str(path), metadata={"format": "np"})
    mapped = map_safetensors(path)
    assert sorted(mapped) == sorted(tensors)
    for name, expected in tensors.items():
        assert mapped[name].dtype == expected.dtype, name
        assert mapped[name].shape == expected.shape, name
        np.testing.assert_array_equal(mapped[name], expected)
        assert not mapped[name].flags.writeable, name


def test_truncated_or_garbled_files_name_the_file(tensors, tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors.numpy.save_file(tensors, str(path))
    whole = path.read_bytes()

    short = tmp_path / "short.safetensors"
    short.write_bytes(whole[:-8])
    with pytest.raises(SafetensorsFormatError, match=r"short\.safetensors: .* past the end"):
        map_safetensors(short)

    garbled = tmp_path / "garbled.safetensors"
    garbled.write_bytes(whole[:8] + b"{not json" + whole[17:])
    with pytest.raises(SafetensorsFormatError, match=r"garbled\.safetensors: header is not JSON"):
        map_safetensors(garbled)

    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"\x01")
    with pytest.raises(SafetensorsFormatError, match="too short"):
        map_safetensors(tiny)


@pytest.mark.parametrize(
    "shape", [(3, 5), (TRANSPOSE_TILE + 3, 2 * TRANSPOSE_TILE + 1), (130, 7, 3, 3), (5, 260, 1, 1)]
)
def test_kernels_take_our_layout(shape):
    kernel = np.random.default_rng(1).standard_normal(shape).astype(np.float16)
    expected = kernel.T if kernel.ndim == 2 else kernel.transpose(2, 3, 1, 0)
    ours = to_hwio(kernel, np.float32)
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    np.testing.assert_array_equal(ours, expected.astype(np.float32))
    np.testing.assert_array_equal(to_nnx_layout("kernel", kernel), expected)
    bias = kernel.reshape(-1)[:7]
    np.testing.assert_array_equal(to_nnx_layout("bias", bias, np.float32), bias)


def test_cpu_device_adopts_aligned_host_arrays():
    host = aligned_empty((257, 3), np.float32)
    host[...] = 1.0
    placed = jax.device_put(host)
    assert placed.unsafe_buffer_pointer() == host.ctypes.data
    np.testing.assert_array_equal(np.asarray(placed), host)
