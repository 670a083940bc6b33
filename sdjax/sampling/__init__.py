"""Sampling: `SubjectDiffusionPipeline` turns a prompt and `Subject`s into images (SPEC §4)."""

from sdjax.sampling.errors import SamplingInputError
from sdjax.sampling.images import image_grid, to_pil
from sdjax.sampling.pipeline import SubjectDiffusionPipeline
from sdjax.sampling.subjects import Subject

__all__ = ["SamplingInputError", "Subject", "SubjectDiffusionPipeline", "image_grid", "to_pil"]
