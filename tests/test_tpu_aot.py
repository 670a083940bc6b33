"""Ahead-of-time compilation: the shape-only run matches the real one, and the training step
compiles for a TPU slice on this CPU host (with libtpu installed)."""

import jax
import pytest

from sdjax import sharding, trainer
from sdjax.training import aot
from tests.training_config import micro_config

TOPOLOGY = "v5e:2x2"
MESH = {"data": 2, "fsdp": 2}
# The program is inspected, never run: the compiler's least execution-time effort compiles fastest.
FAST_COMPILE = {"exec_time_optimization_effort": -1.0}

needs_libtpu = pytest.mark.skipif(
    not aot.libtpu_available(),
    reason="libtpu is not installed (pip install 'sdjax[tpu]'): no TPU compiler on this host",
)


@pytest.fixture(scope="module")
def config():
    return micro_config("unused")  # no record is read: batches are shapes only


def _placement(x):
    return x.shape, x.dtype, x.sharding


def test_abstract_run_matches_built_run(config):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    abstract = trainer.abstract_run(config, mesh)
    built = trainer.build_run(config, mesh)
    for name in ("state", "frozen"):
        expected = jax.tree.map(_placement, getattr(built, name))
        assert jax.tree.map(_placement, getattr(abstract, name)) == expected, name
    leaves = jax.tree.leaves((abstract.state, abstract.frozen))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


@pytest.fixture(scope="module")
def compiled(config):
    tpu_config = config.copy_and_resolve_references()
    tpu_config.mesh.update(MESH)
    return aot.compile_step(tpu_config, TOPOLOGY, FAST_COMPILE)


@needs_libtpu
def test_step_compiles_for_every_chip_of_the_slice(compiled):
    executable, report = compiled
    assert (report.num_devices, report.device_kind, report.mesh) == (4, "TPU v5 lite", MESH)
    devices = jax.tree.leaves(executable.input_shardings)[0].device_set
    assert len(devices) == 4 and {d.platform for d in devices} == {"tpu"}


@needs_libtpu
def test_step_donates_its_state_and_fits_the_chip(compiled):
    _, report = compiled
    assert report.alias_bytes > 0  # the new state is written over the donated one
    assert report.fits, (report.peak_bytes, report.hbm_bytes)
    assert report.flops > 0
