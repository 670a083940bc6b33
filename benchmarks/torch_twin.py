"""A PyTorch twin of the Subject-Diffusion training step, written from SPEC §1–2.

Built from the modules a PyTorch user would take: diffusers' `UNet2DConditionModel` with GLIGEN's
gated self-attention (`attention_type="gated"`) and 5 input channels, its `AutoencoderKL` and
`DDPMScheduler`, transformers' `CLIPTextModel` (the subject CLS fused at its placeholder through
`inputs_embeds`) and `CLIPVisionModelWithProjection`; the grounding net and CLS projector written
here; the cross-attention maps of the attention loss read by an attention processor.

It loads an export of sdjax in the diffusers layout (`python -m sdjax.export RUN OUT --format
diffusers`, or `sdjax.export.export_model(..., fmt="diffusers")`): the same weights as sdjax.
Random draws (latent sample, noise, timesteps) are arguments of the loss, so a test can hand it
sdjax's own draws. Only SPEC's objective is implemented: plain MSE on ε plus the attention loss.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.models.embeddings import get_fourier_embeds_from_boundingbox
from ml_collections import ConfigDict
from safetensors.torch import load_file
from torch import nn
from transformers import CLIPTextModel, CLIPVisionModelWithProjection
from transformers.masking_utils import create_causal_mask

UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
SUBJECT_MODULES_FILE = "subject_modules.safetensors"
DEFAULT_MAP_FACTORS = (2, 4, 8)  # SPEC: maps at latent resolutions 32, 16, 8 of a 64 latent
FOURIER_FREQS = 8  # SPEC §1 "Box Fourier embedding" (diffusers' GLIGEN embedding, base 100)
LAYER_NORM_EPS = 1e-5
MAP_EPS = 1e-5  # denominators of the balanced L1 means
COUNT_EPS = 1e-5  # SPEC: per-sample token sum / (count + 1e-5)
# SPEC §1 "trained?": UNet conv_in, cross-attention to_k/to_v, the adapters, grounding net, CLS
# projector, whole text encoder (names of `SubjectDiffusionTwin`'s parameters).
TRAINABLE = (
    r"^unet\.conv_in\.",
    r"^unet\..*\.attn2\.to_[kv]\.",
    r"^unet\..*\.fuser\.",
    r"^grounding\.",
    r"^cls_projector\.",
    r"^text_encoder\.",
)
FULL_UNET = (r"^unet\.",)


class GroundingNet(nn.Module):
    """Per subject: concat(patch tokens, Fourier(box)) → LayerNorm → Linear → GELU → Linear;
    empty slots take the null patch / position features (SPEC §1 "Grounding tokens")."""

    def __init__(self, patch_dim: int, tokens: int, freqs: int, hidden: int, out: int, use_bbox):
        super().__init__()
        self.freqs, self.use_bbox = freqs, use_bbox
        fourier = freqs * 2 * 4
        self.null_patch_feature = nn.Parameter(torch.zeros(1, tokens, patch_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(1, tokens, fourier))
        self.norm = nn.LayerNorm(patch_dim + fourier, eps=LAYER_NORM_EPS)
        self.linear_1 = nn.Linear(patch_dim + fourier, hidden)
        self.linear_2 = nn.Linear(hidden, out)

    def forward(self, patches: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor):
        """patches (B, S, N, D), boxes (B, S, 4) in [0, 1], valid (B, S) → (B, S·N, out)."""
        b, s, n, _ = patches.shape
        slot = valid[:, :, None, None]
        patches = torch.where(slot, patches, self.null_patch_feature)
        position = get_fourier_embeds_from_boundingbox(self.freqs, boxes)  # (B, S, 8F)
        position = position[:, :, None, :].expand(b, s, n, -1)
        use_box = slot if self.use_bbox else valid.all(dim=1)[:, None, None, None]
        position = torch.where(use_box, position, self.null_position_feature)
        x = self.norm(torch.cat([patches, position], dim=-1))
        x = self.linear_2(nn.functional.gelu(self.linear_1(x)))
        return x.reshape(b, s * n, -1)


class CLSProjector(nn.Module):
    """Image CLS → text width: LayerNorm → Linear → GELU → Linear."""

    def __init__(self, d_cls: int, d_txt: int):
        super().__init__()
        self.layer_norm = nn.LayerNorm(d_cls, eps=LAYER_NORM_EPS)
        self.fc1 = nn.Linear(d_cls, d_txt)
        self.fc2 = nn.Linear(d_txt, d_txt)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(self.layer_norm(cls))))


class GivenTokens(nn.Module):
    """Stands in for GLIGEN's `position_net`: the grounding net's tokens are passed as they are."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens


class MapRecorder:
    """A cross-attention processor computing softmax attention explicitly and recording the
    head-averaged probabilities (B, T, K) at the key positions `positions` (B, K)."""

    def __init__(self):
        self.positions: torch.Tensor | None = None
        self.maps: list[torch.Tensor] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, **kwargs):
        b, n, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = (
            heads(attn.to_q(hidden_states)),
            heads(attn.to_k(context)),
            heads(attn.to_v(context)),
        )
        probs = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
        index = self.positions[:, None, None, :].expand(b, attn.heads, n, -1)
        self.maps.append(probs.gather(-1, index).mean(dim=1))
        out = (probs @ v).transpose(1, 2).reshape(b, n, -1)
        return attn.to_out[1](attn.to_out[0](out))


def recorded_blocks(num_blocks: int, factors: Sequence[int]) -> list[str]:
    """Module-name prefixes of the UNet blocks whose cross-attention maps the loss reads."""
    names = [f"down_blocks.{i}." for i in range(num_blocks) if 2**i in factors]
    names += ["mid_block."] if 2 ** (num_blocks - 1) in factors else []
    return names + [
        f"up_blocks.{i}." for i in range(num_blocks) if 2 ** (num_blocks - 1 - i) in factors
    ]


@dataclasses.dataclass(frozen=True)
class Draws:
    """The step's random numbers: VAE posterior ε (B, 4, h, w), noise (B, 4, h, w), timesteps (B,)."""

    latent: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor

    @classmethod
    def sample(cls, latent_shape: Sequence[int], timesteps: int, generator: torch.Generator):
        return cls(
            torch.randn(*latent_shape, generator=generator),
            torch.randn(*latent_shape, generator=generator),
            torch.randint(0, timesteps, (latent_shape[0],), generator=generator),
        )


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


class SubjectDiffusionTwin(nn.Module):
    """The parts of Subject-Diffusion (SPEC §1) as diffusers/transformers modules."""

    def __init__(self, export: str | Path, config: ConfigDict):
        super().__init__()
        export = Path(export)
        _check_supported(config)
        subject = load_file(str(export / SUBJECT_MODULES_FILE))
        unet_config = dict(UNet2DConditionModel.load_config(export / "unet"))
        self.unet = UNet2DConditionModel.from_config({**unet_config, "attention_type": "gated"})
        unet_state = {**load_file(str(export / "unet" / UNET_WEIGHTS)), **_strip(subject, "unet.")}
        missing, unexpected = self.unet.load_state_dict(unet_state, strict=False)
        if unexpected or any(not k.startswith("position_net.") for k in missing):
            raise ValueError(f"{export}: UNet weights missing {missing}, unexpected {unexpected}")
        self.unet.position_net = GivenTokens()
        self.vae = AutoencoderKL.from_pretrained(export / "vae")
        self.text_encoder = CLIPTextModel.from_pretrained(export / "text_encoder")
        self.image_encoder = CLIPVisionModelWithProjection.from_pretrained(export / "image_encoder")
        vision = self.image_encoder.config
        grounding = config.model.grounding
        self.grounding = GroundingNet(
            vision.hidden_size,
            (vision.image_size // vision.patch_size) ** 2,
            grounding.get("fourier_freqs", FOURIER_FREQS),
            grounding.hidden_dim,
            unet_config["cross_attention_dim"],
            grounding.use_bbox,
        )
        self.grounding.load_state_dict(_strip(subject, "grounding."))
        self.cls_projector = CLSProjector(
            vision.projection_dim, self.text_encoder.config.hidden_size
        )
        self.cls_projector.load_state_dict(_strip(subject, "cls_projector."))
        self.recorder = MapRecorder()
        factors = config.model.unet.get("attention_map_factors", DEFAULT_MAP_FACTORS)
        blocks = recorded_blocks(len(unet_config["block_out_channels"]), factors)
        for name, module in self.unet.named_modules():
            if name.endswith(".attn2") and name.startswith(tuple(blocks)):
                module.set_processor(self.recorder)
        self.scheduler = DDPMScheduler(**config.scheduler.to_dict())

    def set_trainable(self, full_unet: bool = False) -> list[nn.Parameter]:
        """Marks SPEC's trainable set (or it plus the whole UNet) and returns it; the rest frozen."""
        patterns = [re.compile(p) for p in TRAINABLE + (FULL_UNET if full_unet else ())]
        trainable = []
        for name, param in self.named_parameters():
            param.requires_grad_(any(p.search(name) for p in patterns))
            if param.requires_grad:
                trainable.append(param)
        return trainable

    def encode_prompt(self, input_ids, subject_embeds, positions, valid) -> torch.Tensor:
        """`last_hidden_state` of the prompt whose placeholder token embeddings are replaced by
        the valid subjects' embeddings before the positional embeddings are added."""
        text = self.text_encoder
        tokens = text.embeddings.token_embedding(input_ids)
        length = input_ids.shape[1]
        hits = (positions[..., None] == torch.arange(length)) & valid[..., None]  # (B, S, L)
        scattered = torch.einsum("bsl,bsd->bld", hits.to(subject_embeds.dtype), subject_embeds)
        tokens = torch.where(hits.any(dim=1)[..., None], scattered, tokens)
        hidden = text.embeddings(inputs_embeds=tokens)
        mask = create_causal_mask(
            config=text.config, inputs_embeds=hidden, attention_mask=None, cache=None
        )
        encoded = text.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
        return text.final_layer_norm(encoded.last_hidden_state)


def _check_supported(config: ConfigDict) -> None:
    """The twin implements SPEC's objective and conditioning only; other options are refused."""
    tc, model = config.train, config.model
    unsupported = {
        "train.masked_diffusion_loss": (tc.masked_diffusion_loss, False),
        "train.subject_loss_weight": (tc.subject_loss_weight, 1.0),
        "train.snr_gamma": (tc.snr_gamma, 0.0),
        "train.attention_loss": (tc.attention_loss, "balanced_l1"),
        "train.image_encoder_layers": (tc.image_encoder_layers, 0),
        "train.full_image_encoder": (tc.get("full_image_encoder", False), False),
        "train.ema_decay": (tc.ema_decay, 0.0),
        "model.use_location_mask": (model.get("use_location_mask", True), True),
        "model.cls_fusion": (model.get("cls_fusion", True), True),
        "model.box_masked_adapter": (model.get("box_masked_adapter", False), False),
        "model.grounding.box_embedding": (model.grounding.get("box_embedding", True), True),
        "model.grounding.fourier_base": (model.grounding.get("fourier_base", 100.0), 100.0),
        "scheduler.prediction_type": (config.scheduler.prediction_type, "epsilon"),
        "data.cached_latents": (config.data.get("cached_latents", False), False),
    }
    bad = [
        f"{k}={v!r} (twin supports {want!r})" for k, (v, want) in unsupported.items() if v != want
    ]
    if bad:
        raise ValueError("options the PyTorch twin does not implement: " + ", ".join(bad))


def nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def balanced_l1(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean attention outside − mean inside the mask, (B, K), of (B, h, w, K) maps."""
    outside = 1.0 - mask
    out_mean = (attention * outside).sum((1, 2)) / (outside.sum((1, 2)) + MAP_EPS)
    in_mean = (attention * mask).sum((1, 2)) / (mask.sum((1, 2)) + MAP_EPS)
    return out_mean - in_mean


def attention_loss(maps, targets: dict[int, torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """SPEC's normalisation: per-layer maps averaged; per sample the sum over its valid tokens
    divided by their count (+1e-5); then the mean over the whole batch."""
    per_layer = []
    for flat in maps:
        size = round(flat.shape[1] ** 0.5)
        per_layer.append(balanced_l1(flat.reshape(flat.shape[0], size, size, -1), targets[size]))
    per_token = torch.stack(per_layer).mean(dim=0)
    weight = valid.to(per_token.dtype)
    return ((per_token * weight).sum(1) / (weight.sum(1) + COUNT_EPS)).mean()


def subject_diffusion_loss(
    model: SubjectDiffusionTwin, batch: dict[str, torch.Tensor], draws: Draws, config: ConfigDict
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = MSE(ε̂, ε) + λ·L_attn on a batch of the sdjax reader's layout (NHWC images)."""
    tc = config.train
    b, s = batch["subject_pixels"].shape[:2]
    with torch.no_grad():  # frozen VAE and image encoder
        posterior = model.vae.encode(nchw(batch["image"])).latent_dist
        latents = (posterior.mean + posterior.std * draws.latent) * model.vae.config.scaling_factor
        vision = model.image_encoder(pixel_values=nchw(batch["subject_pixels"].flatten(0, 1)))
    keep_text = ~batch["drop_text"]
    subjects = batch["subject_valid"] & ~batch["drop_subjects"][:, None]
    patches = vision.last_hidden_state[:, 1:]
    tokens = model.grounding(
        patches.reshape(b, s, *patches.shape[1:]), batch["subject_boxes"], subjects
    )
    embeds = model.cls_projector(vision.image_embeds).reshape(b, s, -1)
    length = batch["input_ids"].shape[1]
    empty = torch.tensor([tc.bos_id, tc.eos_id] + [tc.pad_id] * (length - 2))
    input_ids = torch.where(keep_text[:, None], batch["input_ids"], empty)
    fused = subjects & keep_text[:, None]
    context = model.encode_prompt(input_ids, embeds, batch["placeholder_positions"], fused)

    location = torch.where(batch["drop_mask"][:, None, None, None], 0.0, batch["location_mask"])
    noisy = model.scheduler.add_noise(latents, draws.noise, draws.timesteps)
    unet_input = torch.cat([noisy, nchw(location)], dim=1)
    model.recorder.positions = torch.cat(
        [batch["placeholder_positions"], batch["entity_positions"]], dim=1
    )
    model.recorder.maps = []
    prediction = model.unet(
        unet_input,
        draws.timesteps,
        context,
        cross_attention_kwargs={"gligen": {"tokens": tokens}},
    ).sample
    diffusion = nn.functional.mse_loss(prediction, draws.noise)
    targets = {}
    for flat in model.recorder.maps:
        size = round(flat.shape[1] ** 0.5)
        masks = batch[f"subject_masks_{size}"].permute(0, 2, 3, 1)  # (B, r, r, S)
        targets[size] = torch.cat([masks, masks], dim=-1)
    attention = attention_loss(model.recorder.maps, targets, fused.repeat(1, 2))
    return diffusion + tc.lambda_attn * attention, {
        "diffusion_loss": diffusion,
        "attention_loss": attention,
    }


def torch_batch(batch: dict) -> dict[str, torch.Tensor]:
    """A NumPy batch of the reader's layout as tensors (integers as int64, as indices need)."""
    out = {}
    for name, value in batch.items():
        t = torch.from_numpy(value.copy())
        out[name] = t.long() if not (t.is_floating_point() or t.dtype == torch.bool) else t
    return out


def make_optimizer(params: list[nn.Parameter], config: ConfigDict):
    """AdamW with linear warm-up from 0, as the config's `optimizer` section."""
    oc = config.optimizer
    optimizer = torch.optim.AdamW(
        params, lr=oc.learning_rate, betas=(oc.b1, oc.b2), eps=oc.eps, weight_decay=oc.weight_decay
    )
    warmup = max(oc.warmup_steps, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(step / warmup, 1.0))
    return optimizer, schedule


def train_step(model, params, optimizer, schedule, batch, draws, config) -> dict[str, float]:
    """Forward, backward, global-norm clipping, AdamW update; the step's loss and gradient norm."""
    optimizer.zero_grad(set_to_none=True)
    loss, parts = subject_diffusion_loss(model, batch, draws, config)
    loss.backward()
    clip = config.optimizer.grad_clip_norm
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    optimizer.step()
    schedule.step()
    return {
        "loss": loss.item(),
        "grad_norm": norm.item(),
        **{k: v.item() for k, v in parts.items()},
    }
