"""AdamW: the same steps as optax's clip-then-adamw, skipped steps change nothing, and the update
of a donated state runs in place."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from sdjax.training.optimizer import learning_rate_schedule, make_optimizer

STEPS = 5
TOLERANCE = 1e-6  # float32, max abs difference of parameters and moments after STEPS steps


def optimizer_config(grad_clip_norm: float = 1.0) -> ConfigDict:
    return ConfigDict(
        dict(
            learning_rate=1e-2,
            warmup_steps=3,
            b1=0.9,
            b2=0.99,
            eps=1e-8,
            weight_decay=0.05,
            grad_clip_norm=grad_clip_norm,
        )
    )


def tree(seed: int, scale: float = 1.0) -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(seed), 2)
    return {
        "kernel": scale * jax.random.normal(keys[0], (16, 8)),
        "bias": scale * jax.random.normal(keys[1], (8,)),
    }


def max_difference(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in pairs)


def assert_unchanged(new, old) -> None:
    for x, y in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("grad_clip_norm", [1.0, 0.0])
def test_matches_optax_clip_then_adamw(grad_clip_norm):
    config = optimizer_config(grad_clip_norm)
    ours = make_optimizer(config)
    reference = optax.adamw(
        learning_rate_schedule(config),
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    if grad_clip_norm:
        reference = optax.chain(optax.clip_by_global_norm(grad_clip_norm), reference)
    params = ref_params = tree(0)
    state, ref_state = ours.init(params), reference.init(params)
    for step in range(STEPS):
        grads = tree(step + 1, scale=0.5)  # global norm ~3: clipped when clipping is on
        params, state = ours.update(grads, state, params)
        updates, ref_state = reference.update(grads, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)
    assert max_difference(params, ref_params) <= TOLERANCE
    adam_state = ref_state[-1][0] if grad_clip_norm else ref_state[0]
    assert max_difference(state.mu, adam_state.mu) <= TOLERANCE
    assert max_difference(state.nu, adam_state.nu) <= TOLERANCE
    assert int(state.count) == STEPS


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_skipped_update_changes_nothing(bad):
    optimizer = make_optimizer(optimizer_config())
    params = tree(0)
    params, state = optimizer.update(tree(1), optimizer.init(params), params)  # nonzero moments
    grads = jax.tree.map(lambda g: g.at[0].set(bad), tree(2))
    new_params, new_state = optimizer.update(grads, state, params, apply=False)
    assert_unchanged((new_params, new_state), (params, state))


def test_skipped_first_step_changes_nothing():
    """At count 0 the bias corrections would divide by zero; a skipped step must not see them."""
    optimizer = make_optimizer(optimizer_config())
    params = tree(0)
    state = optimizer.init(params)
    new_params, new_state = optimizer.update(tree(1), state, params, apply=False)
    assert_unchanged((new_params, new_state), (params, state))


def test_donated_update_runs_in_place():
    """No temporary as large as a moment: parameters and moments are rewritten where they are."""
    optimizer = make_optimizer(optimizer_config())
    params = {f"w{i}": jnp.ones((256, 256)) for i in range(4)}
    state = (params, optimizer.init(params))

    def update(state, grads, apply):
        return optimizer.update(grads, state[1], state[0], apply)

    grads = {name: jnp.full((256, 256), 0.1) for name in params}
    compiled = jax.jit(update, donate_argnums=0).lower(state, grads, True).compile()
    one_tensor = params["w0"].nbytes
    assert compiled.memory_analysis().temp_size_in_bytes < one_tensor
