"""AdamW with linear warm-up then constant learning rate, and global-norm clipping (SPEC §2)."""

from __future__ import annotations

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


def make_optimizer(config: ConfigDict) -> optax.GradientTransformation:
    """The optimizer of `config.optimizer` (fields: learning_rate, warmup_steps, b1, b2, eps,
    weight_decay, grad_clip_norm — 0 disables clipping)."""
    adamw = optax.adamw(
        learning_rate_schedule(config),
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    if config.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)
    return adamw
