"""AdamW with linear warm-up then constant learning rate, and global-norm clipping (SPEC §2).

The update rewrites parameters and moments in place. A step whose loss or gradient is not finite
is skipped by its scalars, not by selecting between old and new trees: the decays become 1 and
the learning rate 0, so every buffer is rewritten with its old value. (Selecting per tensor makes
two fused loops read each old moment, one of them after the other has overwritten it, so XLA
copies every moment first: twice the trainable parameters' size in extra memory.)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict


def learning_rate_schedule(config: ConfigDict) -> optax.Schedule:
    """Linear warm-up from 0 over `warmup_steps`, then constant `learning_rate`."""
    if config.warmup_steps <= 0:
        return optax.constant_schedule(config.learning_rate)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps),
            optax.constant_schedule(config.learning_rate),
        ],
        boundaries=[config.warmup_steps],
    )


def warmup_cosine_schedule(learning_rate: float, warmup: int, num_steps: int) -> optax.Schedule:
    """Linear warm-up over `warmup` steps, then cosine decay to zero at `num_steps` (the schedule
    of the short pre-fits: the VAE and the image encoder)."""
    warmup = max(warmup, 1)
    return optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup, max(num_steps, warmup + 1)
    )


class AdamWState(NamedTuple):
    count: jax.Array  # updates applied so far (skipped steps do not count)
    mu: Any  # first moments, a tree like the parameters
    nu: Any  # second moments


@dataclasses.dataclass(frozen=True)
class AdamW:
    """Decoupled weight decay Adam (as `optax.chain(clip_by_global_norm, adamw)`)."""

    learning_rate: optax.Schedule
    b1: float
    b2: float
    eps: float
    weight_decay: float
    grad_clip_norm: float  # 0 disables clipping

    def init(self, params: Any) -> AdamWState:
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return AdamWState(count=jnp.zeros((), jnp.int32), mu=zeros(), nu=zeros())

    def update(
        self, grads: Any, state: AdamWState, params: Any, apply: jax.Array | bool = True
    ) -> tuple[Any, AdamWState]:
        """(new parameters, new state); with `apply` false both come back unchanged."""
        apply = jnp.asarray(apply)
        scale = jnp.ones((), jnp.float32)
        if self.grad_clip_norm > 0:
            norm = optax.global_norm(grads)
            scale = jnp.where(norm < self.grad_clip_norm, 1.0, self.grad_clip_norm / norm)
        # A skipped step's gradient is zero (not NaN times zero), its decays one.
        scale = jnp.where(apply, scale, 0.0)
        grads = jax.tree.map(lambda g: jnp.where(apply, g, 0) * scale.astype(g.dtype), grads)
        b1 = jnp.where(apply, self.b1, 1.0)
        b2 = jnp.where(apply, self.b2, 1.0)
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)

        count = state.count + apply.astype(jnp.int32)
        seen = jnp.maximum(count, 1).astype(jnp.float32)  # bias corrections stay finite at 0
        correction1 = 1 - self.b1**seen
        correction2 = 1 - self.b2**seen
        lr = jnp.where(apply, self.learning_rate(state.count), 0.0)

        def step(p, m, v):
            adam = (m / correction1) / (jnp.sqrt(v / correction2) + self.eps)
            return p - (lr * (adam + self.weight_decay * p)).astype(p.dtype)

        params = jax.tree.map(step, params, mu, nu)
        return params, AdamWState(count=count, mu=mu, nu=nu)


def make_optimizer(config: ConfigDict) -> AdamW:
    """The optimizer of `config.optimizer` (fields: learning_rate, warmup_steps, b1, b2, eps,
    weight_decay, grad_clip_norm — 0 disables clipping)."""
    return AdamW(
        learning_rate=learning_rate_schedule(config),
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
        grad_clip_norm=config.grad_clip_norm,
    )
