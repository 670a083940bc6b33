"""sdjax: Subject-Diffusion in JAX/Flax NNX."""

import flax

# Parameters carry logical axis names as metadata; sharding is applied explicitly by
# `sdjax.sharding` once a mesh exists, so variables are never placed eagerly at creation.
flax.config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"
