"""SPEC's reference: Stable Diffusion 2 base (512 px) + OpenCLIP ViT-H/14 vision tower.

Set `--config.model.pretrained=/path/to/stable-diffusion-2-base` and
`--config.model.image_encoder_path=/path/to/CLIP-ViT-H-14` (a transformers
CLIPVisionModelWithProjection folder). The sizes below equal those releases' config.json files and
are used when a part is built without weights (ahead-of-time compilation, benchmarks).

`--config=configs/sd2_base.py:reference` is the authors' recipe as their public code runs it
(docs/authors_recipe.md lists every setting it changes and every difference that remains).
"""

from ml_collections import ConfigDict

from configs.common import base_config, grounding_config

RESOLUTION = 512
VARIANTS = ("", "reference")


def reference_recipe(c: ConfigDict) -> None:
    """The authors' settings where sdjax's default differs (docs/authors_recipe.md)."""
    c.optimizer.grad_clip_norm = 0.0  # their DeepSpeed config and train.sh set no clipping
    c.train.attention_normalisation = "per_sample"
    c.data.entity_token = "last"
    c.data.crop_contains = "all"
    c.data.filters.box_fill = "label_map"
    c.data.background = "procedural"  # "folder" with data.background_dir: theirs is BG-20k
    c.data.dropout.subjects = 0.0  # the grounding tokens are never dropped
    c.model.new_layer_init = "torch_linear"
    c.sampling.sampler = "pndm"
    c.sampling.steps = 50
    c.sampling.guidance_text = 7.5
    c.sampling.guidance_image = 1.5
    c.sampling.outside_window = "base_model"


def get_config(variant: str = "") -> ConfigDict:
    """SD 2 base with sdjax's defaults, or (`variant="reference"`) the authors' recipe."""
    if variant not in VARIANTS:
        raise ValueError(f"configs/sd2_base.py variant {variant!r}; known: {list(VARIANTS)}")
    c = base_config(RESOLUTION)
    c.workdir = "runs/sd2_base"
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.model.attention_block = 512  # on CPUs: 4096-token self-attention in 8 x 8 blocks
    c.model.unet = ConfigDict(
        dict(
            sample_size=RESOLUTION // 8,
            in_channels=5,
            out_channels=4,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=(5, 10, 20, 20),
            cross_attention_dim=1024,
            use_linear_projection=True,
            upcast_attention=False,
            norm_num_groups=32,
            grounding_dim=1024,
            use_adapter=True,
        )
    )
    c.model.vae = ConfigDict(dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2))
    c.model.text_encoder = ConfigDict(
        dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            hidden_act="gelu",
        )
    )
    c.model.image_encoder = ConfigDict(
        dict(
            image_size=224,
            patch_size=14,
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            projection_dim=1024,
            hidden_act="gelu",
        )
    )
    c.model.grounding = grounding_config(hidden_dim=1024, max_subjects=2)
    c.data.pad_id = 0  # the SD 2.x tokenizer pads with "!"
    c.data.batch_size = 256
    c.mesh.data = -1
    c.mesh.fsdp = 1
    if variant == "reference":
        c.workdir = "runs/sd2_base_reference"
        reference_recipe(c)
    return c
