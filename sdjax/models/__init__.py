"""Flax NNX modules of Subject-Diffusion (NHWC, float32 parameters, configurable compute dtype)."""
