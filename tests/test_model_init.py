"""Host-side random initialisation (`sdjax.models.init`): distributions, determinism, placement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import config as flax_config
from flax import nnx

from sdjax import sharding
from sdjax.models import init
from sdjax.models.layers import EMBEDDING_INIT, LayerNorm, conv, embedding, linear


class Small(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.dense = linear(64, 96, rngs=rngs)
        self.zero = linear(8, 8, zero_init=True, rngs=rngs)
        self.conv = conv(16, 32, 3, rngs=rngs)
        self.table = embedding(50, 32, rngs=rngs)
        self.norm = LayerNorm(32, rngs=rngs)
        # No InitSpec: the model's own (jitted) initialisation provides it.
        self.extra = nnx.Param(jax.random.normal(rngs.params(), (7,)) + 3.0)


@pytest.fixture(scope="module")
def small() -> Small:
    return init.init_module(Small, seed=3)


def test_normals_moments_and_truncation():
    rng = np.random.default_rng(0)
    values = init.normals(rng, 400_001)
    assert values.dtype == np.float32 and values.shape == (400_001,)
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01
    assert abs(np.mean(np.abs(values) > 2) - 0.0455) < 0.002  # the unit normal's tail mass
    bounded = init.normals(rng, 100_000, stddev=0.5, bound=2.0)
    assert np.abs(bounded).max() <= 1.0
    assert abs(bounded.std() / 0.5 - init.TRUNCATED_STDDEV) < 0.01


def test_parameters_follow_their_specs(small):
    kernel = np.asarray(small.dense.kernel[...])
    assert abs(kernel.std() - 64**-0.5) < 0.1 * 64**-0.5  # lecun: variance 1 / fan_in
    assert np.abs(kernel).max() <= 2 * 64**-0.5 / init.TRUNCATED_STDDEV
    conv_kernel = np.asarray(small.conv.kernel[...])
    assert abs(conv_kernel.std() - (9 * 16) ** -0.5) < 0.1 * (9 * 16) ** -0.5
    assert abs(np.asarray(small.table.embedding[...]).std() - EMBEDDING_INIT.stddev) < 0.003
    np.testing.assert_array_equal(small.zero.kernel[...], 0)
    np.testing.assert_array_equal(small.dense.bias[...], 0)
    np.testing.assert_array_equal(small.norm.scale[...], 1)
    assert small.dense.kernel.get_metadata()["out_sharding"] == ("embed", "mlp")


def test_unannotated_variables_take_the_models_own_values(small):
    expected = jax.jit(lambda: Small(nnx.Rngs(3)).extra[...])()
    np.testing.assert_array_equal(small.extra[...], expected)


def test_deterministic_per_seed_and_path(small):
    a, b = init.stream(0, ("x", 0, "kernel")), init.stream(0, ("x", 1, "kernel"))
    assert a.random() != b.random()
    again = init.init_module(Small, seed=3)
    other = init.init_module(Small, seed=4)
    np.testing.assert_array_equal(small.dense.kernel[...], again.dense.kernel[...])
    assert not np.array_equal(small.dense.kernel[...], other.dense.kernel[...])


def test_sharded_placement_keeps_values(small):
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1})
    placed = init.init_module(Small, seed=3, shardings=lambda s: sharding.state_shardings(s, mesh))
    kernel = placed.dense.kernel[...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    np.testing.assert_array_equal(kernel, small.dense.kernel[...])
    assert placed.dense.kernel[...].dtype == jnp.float32


def test_only_the_selected_variables_are_drawn_with_the_same_values(small):
    """`draw`: the selected variables get the values a full draw gives them (the model's own
    initialisation included); the others stay shape structs."""
    some = init.init_module(Small, seed=3, draw=lambda path, _: path[0] in ("dense", "extra"))
    np.testing.assert_array_equal(some.dense.kernel[...], small.dense.kernel[...])
    np.testing.assert_array_equal(some.extra[...], small.extra[...])
    assert isinstance(some.conv.kernel.get_value(), jax.ShapeDtypeStruct)
    assert some.conv.kernel.get_value().shape == small.conv.kernel[...].shape
    assert isinstance(some.norm.scale.get_value(), jax.ShapeDtypeStruct)


def test_a_given_abstract_model_gives_the_same_values_and_stays_abstract(small):
    """`abstract`: the model built once by the caller (another thread may read it meanwhile)."""
    abstract = nnx.eval_shape(lambda: Small(nnx.Rngs(3)))
    drawn = init.init_module(Small, seed=3, abstract=abstract)
    np.testing.assert_array_equal(drawn.dense.kernel[...], small.dense.kernel[...])
    np.testing.assert_array_equal(drawn.extra[...], small.extra[...])
    leaves = jax.tree.leaves(nnx.state(abstract))
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


def test_every_variable_of_subject_diffusion_is_drawn_on_the_host():
    """No variable of the model needs its own jitted initialisation (a trace of the whole model
    and an XLA compile at every start)."""
    from sdjax.models.subject_diffusion import build_subject_diffusion
    from tests.training_config import micro_config

    config = micro_config("").model
    model = nnx.eval_shape(lambda: build_subject_diffusion(config, nnx.Rngs(0)))
    missing = [
        "/".join(map(str, path))
        for path, var in nnx.to_flat_state(nnx.state(model))
        if var.get_metadata().get(init.INIT_METADATA) is None
    ]
    assert missing == []


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown initialiser 'orthogonal'"):
        init.InitSpec("orthogonal")


@pytest.mark.parametrize("fan_in", [32, 288])
def test_uniform_spec_draws_torch_linear_default_on_the_host(fan_in):
    """PyTorch's nn.Linear default (kaiming-uniform a=√5, uniform bias): both U(±1/√fan_in)."""
    import torch

    torch.manual_seed(0)
    reference = torch.nn.Linear(fan_in, 4096)
    spec = init.InitSpec("uniform", limit=1.0 / np.sqrt(fan_in))
    drawn = init.sample(spec, (fan_in, 4096), np.float32, init.stream(0, ("k",)))
    for ours, theirs in ((drawn, reference.weight), (drawn[0], reference.bias)):
        theirs = theirs.detach().numpy()
        assert np.abs(ours).max() <= spec.limit
        assert np.abs(ours).max() == pytest.approx(np.abs(theirs).max(), rel=0.02)
        assert ours.std() == pytest.approx(theirs.std(), rel=0.05)


def test_torch_linear_init_of_the_added_layers_only():
    from sdjax.models.subject_diffusion import build_subject_diffusion, new_layers
    from tests.training_config import micro_config

    config = micro_config("").model
    config.new_layer_init = "torch_linear"
    model = init.init_module(lambda rngs: build_subject_diffusion(config, rngs), seed=0)
    layers = [m for layer in new_layers(model) for _, m in nnx.iter_graph(layer)]
    linears = [m for m in layers if isinstance(m, nnx.Linear)]
    assert len(new_layers(model)) > 2 and linears  # grounding, projector and the adapters
    for layer in linears:
        limit = 1.0 / np.sqrt(layer.in_features)
        kernel = np.asarray(layer.kernel[...])
        assert limit / 2 < np.abs(kernel).max() <= limit
        if layer.bias is not None:  # drawn, not the zero default
            assert limit / 2 < np.abs(np.asarray(layer.bias[...])).max() <= limit
    untouched = model.unet.conv_in
    assert np.abs(np.asarray(untouched.bias[...])).max() == 0.0
    with pytest.raises(ValueError, match="new_layer_init='kaiming'"):
        config.new_layer_init = "kaiming"
        build_subject_diffusion(config, nnx.Rngs(0))


@pytest.mark.parametrize("gate", [0.0, 0.75])
def test_adapter_gates_start_at_the_configured_value(gate):
    """`model.adapter_gate_init`: every adapter's two gates, as `init_module` draws them; the
    adapters' other parameters are drawn as without it."""
    from sdjax.models.subject_diffusion import adapters_of, build_subject_diffusion
    from tests.training_config import micro_config

    config = micro_config("").model
    config.adapter_gate_init = gate
    model = init.init_module(lambda rngs: build_subject_diffusion(config, rngs), seed=0)
    adapters = adapters_of(model.unet)
    assert adapters
    for adapter in adapters:
        assert float(adapter.alpha_attn[...]) == gate
        assert float(adapter.alpha_dense[...]) == gate
    config.adapter_gate_init = 0.0
    plain = init.init_module(lambda rngs: build_subject_diffusion(config, rngs), seed=0)
    ours, theirs = (
        adapters[0].attn.to_q.kernel[...],
        adapters_of(plain.unet)[0].attn.to_q.kernel[...],
    )
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_constant_spec_on_the_host():
    values = init.sample(init.InitSpec("constant", value=-2.5), (3, 2), np.float32, None)
    np.testing.assert_array_equal(values, np.full((3, 2), -2.5, np.float32))


def test_modules_build_under_flax_defaults_inside_a_mesh():
    """Importing sdjax leaves flax's global flags alone, and under them (variables sharded at
    creation when annotated) a module still builds inside a mesh context without being split by
    its logical axes: placement is `sdjax.sharding`'s, once per model."""
    import sdjax.trainer  # noqa: F401  every floor of the package

    assert flax_config.flax_always_shard_variable  # flax's default
    mesh = sharding.make_mesh({"fsdp": 8})
    with jax.set_mesh(mesh):
        module = Small(nnx.Rngs(0))
    kernel = module.dense.kernel.get_value()
    assert kernel.sharding.is_fully_replicated  # not split by its logical axes at creation
