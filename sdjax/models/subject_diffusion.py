"""The whole Subject-Diffusion model: UNet, VAE, fusion text encoder, image encoder, grounding net."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from sdjax.models.attention import GatedSelfAttentionDense
from sdjax.models.grounding import GroundingConfig, GroundingNet
from sdjax.models.image_encoder import CLIPVisionConfig, CLIPVisionModelWithProjection
from sdjax.models.init import set_constant, torch_linear_init
from sdjax.models.text_encoder import CLIPTextConfig, CLIPTextModel, CLSProjector
from sdjax.models.unet import UNet, UNetConfig
from sdjax.models.vae import AutoencoderKL, VAEConfig


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """Which of the method's conditioning paths the model uses (all, as in SPEC; switching one
    off is an ablation): the location-mask input channel and the CLS fusion into the prompt; and
    whether the adapters are kept to the boxes (`box_masked_adapter`, beyond SPEC: a cell's
    adapter attends only to the grounding tokens of the subjects whose box covers it)."""

    location_mask: bool = True
    cls_fusion: bool = True
    box_masked_adapter: bool = False

    @classmethod
    def from_config(cls, config: ConfigDict) -> Conditioning:
        """From the `model` section (keys absent in older configs mean SPEC's)."""
        return cls(
            config.get("use_location_mask", True),
            config.get("cls_fusion", True),
            config.get("box_masked_adapter", False),
        )


class SubjectDiffusion(nnx.Module):
    """Holds every part; parameter paths start with the part's name (`unet/...`, `text_encoder/...`)."""

    def __init__(
        self,
        unet: UNet,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        image_encoder: CLIPVisionModelWithProjection,
        grounding: GroundingNet,
        cls_projector: CLSProjector,
        conditioning: Conditioning = Conditioning(),
    ):
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.grounding = grounding
        self.cls_projector = cls_projector
        self.conditioning = conditioning

    def location_input(self, mask: jax.Array) -> jax.Array:
        """The UNet's location channel for a (B, h, w, 1) mask: the mask, or zeros when the
        location path is off."""
        return mask if self.conditioning.location_mask else jnp.zeros_like(mask)

    def grounding_layout(
        self, boxes: jax.Array, valid: jax.Array
    ) -> tuple[jax.Array, jax.Array] | None:
        """The UNet's `grounding_layout` for subjects' boxes (B, S, 4) and valid slots (B, S):
        each grounding token's box (B, S*N, 4) and validity (B, S*N) when the adapters are kept
        to the boxes, else None. A token's box here is its subject's, also with
        `grounding.patch_boxes` (which places only its position code on its tile): a cell sees
        every token of the subjects covering it."""
        if not self.conditioning.box_masked_adapter:
            return None
        n = self.grounding.config.num_patch_tokens
        b, s = valid.shape
        per_token = jnp.broadcast_to(boxes[:, :, None, :], (b, s, n, 4))
        return per_token.reshape(b, s * n, 4), jnp.repeat(valid, n, axis=1)

    def encode_subjects(
        self,
        pixels: jax.Array,
        boxes: jax.Array,
        valid: jax.Array,
        use_bbox: bool | jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Subject images (B, S, H, W, 3), boxes (B, S, 4), valid (B, S) →
        (grounding tokens (B, S*N, grounding_dim), subject embeddings at text width (B, S, D)).
        use_bbox: as `GroundingNet` (default: its config's)."""
        b, s = pixels.shape[:2]
        cls, patches = self.image_encoder(pixels.reshape(b * s, *pixels.shape[2:]))
        patches = patches.reshape(b, s, *patches.shape[1:])
        tokens = self.grounding(patches, boxes, valid, use_bbox)
        embeds = self.cls_projector(cls).reshape(b, s, -1)
        return tokens, embeds

    def encode_prompt(
        self,
        input_ids: jax.Array,
        subject_embeds: jax.Array | None = None,
        placeholder_positions: jax.Array | None = None,
        subject_valid: jax.Array | None = None,
    ) -> jax.Array:
        """The UNet's cross-attention context: fused text encoder `last_hidden_state` (the prompt
        alone when CLS fusion is off)."""
        if not self.conditioning.cls_fusion:
            subject_embeds = placeholder_positions = subject_valid = None
        return self.text_encoder(input_ids, subject_embeds, placeholder_positions, subject_valid)


def part_configs(config: ConfigDict) -> dict:
    """Typed configs of every part from the `model` section of an sdjax config."""
    dtype = jnp.dtype(config.dtype)
    unet = UNetConfig(
        **config.unet.to_dict(),
        dtype=dtype,
        remat=config.remat,
        attention_block=config.get("attention_block", 0),  # absent in older exports
        attention=config.get("attention", "auto"),
    )
    text = CLIPTextConfig(**config.text_encoder.to_dict(), dtype=dtype, remat=config.remat)
    image = CLIPVisionConfig(**config.image_encoder.to_dict(), dtype=dtype, remat=config.remat)
    vae = VAEConfig(**config.vae.to_dict())
    grounding = GroundingConfig(
        **config.grounding.to_dict(),
        patch_dim=image.hidden_size,
        num_patch_tokens=(image.image_size // image.patch_size) ** 2,
        out_dim=unet.grounding_dim,
        dtype=config.dtype,
    )
    return {
        "unet": unet,
        "text_encoder": text,
        "image_encoder": image,
        "vae": vae,
        "grounding": grounding,
    }


# Initialisation of the layers Subject-Diffusion adds to Stable Diffusion and CLIP (grounding net,
# CLS projector, gated adapters): flax's lecun-normal kernels with zero biases, or PyTorch's
# default `nn.Linear` (the reference code's).
NEW_LAYER_INITS = ("lecun_normal", "torch_linear")


def new_layers(model: SubjectDiffusion) -> list[nnx.Module]:
    """The grounding net, the CLS projector and every gated adapter of the UNet."""
    return [model.grounding, model.cls_projector, *adapters_of(model.unet)]


def adapters_of(unet: UNet) -> list[GatedSelfAttentionDense]:
    """Every gated grounding adapter of `unet`."""
    return [m for _, m in nnx.iter_graph(unet) if isinstance(m, GatedSelfAttentionDense)]


def build_subject_diffusion(config: ConfigDict, rngs: nnx.Rngs) -> SubjectDiffusion:
    """A randomly initialised model of the sizes in `config` (the `model` section)."""
    parts = part_configs(config)
    text, image = parts["text_encoder"], parts["image_encoder"]
    new_layer_init = config.get("new_layer_init", "lecun_normal")  # absent in older exports
    if new_layer_init not in NEW_LAYER_INITS:
        raise ValueError(f"model.new_layer_init={new_layer_init!r}; known: {list(NEW_LAYER_INITS)}")
    model = SubjectDiffusion(
        unet=UNet(parts["unet"], rngs=rngs),
        vae=AutoencoderKL(parts["vae"], rngs=rngs),
        text_encoder=CLIPTextModel(text, rngs=rngs),
        image_encoder=CLIPVisionModelWithProjection(image, rngs=rngs),
        grounding=GroundingNet(parts["grounding"], rngs=rngs),
        cls_projector=CLSProjector(
            image.projection_dim, text.hidden_size, rngs=rngs, dtype=text.dtype
        ),
        conditioning=Conditioning.from_config(config),
    )
    if new_layer_init == "torch_linear":
        for layer in new_layers(model):
            torch_linear_init(layer, rngs)
    gate = config.get("adapter_gate_init", 0.0)  # absent in older exports
    if gate:
        for adapter in adapters_of(model.unet):
            set_constant(adapter.alpha_attn, gate)
            set_constant(adapter.alpha_dense, gate)
    return model
