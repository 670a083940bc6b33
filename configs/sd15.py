"""Stable Diffusion 1.5 (512 px) + CLIP ViT-L/14 vision tower (768-d text, 8 heads, conv projections).

Set `--config.model.pretrained=/path/to/stable-diffusion-v1-5` and
`--config.model.image_encoder_path=/path/to/clip-vit-large-patch14`.
"""

from ml_collections import ConfigDict

from configs.sd2_base import get_config as sd2_config


def get_config() -> ConfigDict:
    c = sd2_config()
    c.workdir = "runs/sd15"
    c.model.unet.update(
        dict(
            attention_head_dim=(8, 8, 8, 8),
            cross_attention_dim=768,
            use_linear_projection=False,
            grounding_dim=768,
        )
    )
    c.model.text_encoder.update(
        dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            hidden_act="quick_gelu",
        )
    )
    c.model.image_encoder.update(
        dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            projection_dim=768,
            hidden_act="quick_gelu",
        )
    )
    c.model.grounding.hidden_dim = 768
    c.data.pad_id = 49407  # the SD 1.x tokenizer pads with <|endoftext|>
    return c
