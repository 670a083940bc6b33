"""Evaluation: DreamBench (DINO, CLIP-I, CLIP-T in JAX) and the toy-subjects world, one command
(`python -m sdjax.eval --help`)."""
