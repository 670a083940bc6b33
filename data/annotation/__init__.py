"""From raw photos to a JSONL manifest: captions, nouns, boxes and masks (`data/annotate.py`).

The models are PyTorch transformers folders; install the `annotate` extra to run it.
"""
