"""A micro Subject-Diffusion config for training tests: the tiny preset, smaller still."""

from ml_collections import ConfigDict

from configs import tiny
from sdjax.input_pipeline.config import default_config

RESOLUTION = 32
VAE_FACTOR = 2  # two VAE levels


def micro_config(file_pattern: str, batch_size: int = 8) -> ConfigDict:
    c = tiny.get_config()
    c.model.unet.update(
        dict(
            sample_size=RESOLUTION // VAE_FACTOR,
            block_out_channels=(16, 16),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(2, 2),
            cross_attention_dim=32,
            norm_num_groups=8,
            grounding_dim=32,
            attention_map_factors=(1, 2),
        )
    )
    c.model.vae.update(dict(block_out_channels=(8, 8), norm_num_groups=4))
    c.model.text_encoder.update(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1))
    c.model.image_encoder.update(
        dict(
            image_size=28,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            projection_dim=32,
        )
    )
    c.model.grounding.hidden_dim = 32
    data = default_config(RESOLUTION)
    data.update(
        dict(
            file_pattern=file_pattern,
            batch_size=batch_size,
            subject_size=28,
            latent_downsample=VAE_FACTOR,
            attention_map_sizes=(RESOLUTION // VAE_FACTOR, RESOLUTION // VAE_FACTOR // 2),
            shuffle_buffer=16,
            background="white",
        )
    )
    c.data = data
    c.train.update(dict(log_every=1, checkpoint_every=2, async_checkpoints=False, sample_every=0))
    return c


def get_config() -> ConfigDict:
    """The micro config for `train.py --config=tests/training_config.py` (reads data/sample)."""
    return micro_config(file_pattern="")
