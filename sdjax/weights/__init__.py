"""Weight import and export: diffusers / transformers safetensors folders ↔ sdjax modules."""

from sdjax.weights.clip import load_image_encoder, load_text_encoder
from sdjax.weights.core import WeightLoadError
from sdjax.weights.subject_diffusion import load_parts, load_subject_diffusion
from sdjax.weights.unet import load_unet
from sdjax.weights.vae import load_vae

__all__ = [
    "WeightLoadError",
    "load_image_encoder",
    "load_parts",
    "load_subject_diffusion",
    "load_text_encoder",
    "load_unet",
    "load_vae",
]
