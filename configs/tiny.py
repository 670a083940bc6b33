"""The CPU default: a tiny Subject-Diffusion on the same code paths, trained on data/sample."""

from pathlib import Path

from ml_collections import ConfigDict

from configs.common import base_config, grounding_config

RESOLUTION = 128
SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "data" / "sample" / "images"


def get_config() -> ConfigDict:
    c = base_config(RESOLUTION)
    c.workdir = "runs/tiny"
    c.model.unet = ConfigDict(
        dict(
            sample_size=RESOLUTION // 8,
            in_channels=5,
            out_channels=4,
            block_out_channels=(32, 64, 64, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=(2, 4, 4, 4),
            cross_attention_dim=64,
            use_linear_projection=True,
            upcast_attention=False,
            norm_num_groups=16,
            grounding_dim=64,
            use_adapter=True,
        )
    )
    c.model.vae = ConfigDict(
        dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8)
    )
    c.model.text_encoder = ConfigDict(
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            hidden_act="gelu",
        )
    )
    c.model.image_encoder = ConfigDict(
        dict(
            image_size=112,
            patch_size=14,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            projection_dim=64,
            hidden_act="gelu",
        )
    )
    c.model.grounding = grounding_config(hidden_dim=64, max_subjects=2)

    c.data.file_pattern = ""  # empty: build data/sample into WORKDIR/data and read it
    c.data.batch_size = 4
    c.data.subject_size = c.model.image_encoder.image_size
    c.data.shuffle_buffer = 64

    c.train.num_steps = 200
    c.train.log_every = 10
    c.train.checkpoint_every = 100
    c.train.sample_every = 100
    c.train.sample_prompt = "a cup on a wooden table"
    c.train.sample_subjects = (f"{SAMPLE_IMAGES / 'coffee.jpg'}@0.25,0.25,0.75,0.75",)
    c.optimizer.learning_rate = 3e-4
    c.optimizer.warmup_steps = 10
    c.sampling.steps = 10
    return c
