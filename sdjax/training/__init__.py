"""Training of Subject-Diffusion: trainable set, optimizer, step, checkpoints, metrics."""
