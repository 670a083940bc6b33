"""The default: the toy-subjects world, end to end on a CPU (docs/toy_world.md).

Four stages, each cached in the work directory: `world` (procedural scenes of coloured,
patterned shapes on named backgrounds at 64 px, written as real TFRecords with held-out
evaluation scenes), `vae_fit` (a VAE fitted by sdjax on those images, then frozen),
`encoder_fit` (the image encoder pre-fitted as a classifier of the world's subjects, then frozen
as SPEC's CLIP is) and Subject-Diffusion trained on them. No UNet is pretrained, so the whole
UNet trains besides SPEC's trainable set.
"""

from pathlib import Path

from ml_collections import ConfigDict

from configs.common import base_config, grounding_config
from sdjax.toy_world import world

RESOLUTION = world.DEFAULT_IMAGE_SIZE
VAE_DOWNSAMPLE = 4  # 64 px images → 16 x 16 latents: the patterns stay resolvable
LATENT = RESOLUTION // VAE_DOWNSAMPLE
LATENT_CHANNELS = 8  # twice SD's 4: flat colours and 3 px stripes come back without drift
MAX_SUBJECTS = 3
# Flat shapes drawn in a paint program (not by the world's renderer), in held-out looks.
REFERENCES = Path(__file__).resolve().parents[1] / "data" / "references"


def world_config() -> ConfigDict:
    """The `world` section: what `data/toy_world.py` renders, and how many of each."""
    w = ConfigDict()
    w.seed = 0
    w.image_size = RESOLUTION
    w.num_images = 4000  # training images
    w.num_shards = 4  # record shards (at least the number of reading hosts)
    w.subjects_weights = (0.4, 0.4, 0.2)  # chance of 1, 2, 3 subjects in a training image
    w.num_eval = 100  # held-out evaluation scenes per number of subjects (1, 2, 3)
    w.min_side_fraction = world.DEFAULT_MIN_SIDE_FRACTION  # box sides, of the image side
    w.max_side_fraction = world.DEFAULT_MAX_SIDE_FRACTION
    w.max_aspect = world.DEFAULT_MAX_ASPECT  # box aspect within [1/max_aspect, max_aspect]
    w.max_overlap = world.DEFAULT_MAX_OVERLAP  # pairwise box intersection over the smaller box
    w.pattern_period = world.DEFAULT_PERIOD  # pixels
    return w


def vae_model_config() -> ConfigDict:
    """The `model.vae` section: an AutoencoderKL with a 4x downsample (64 px → 16 x 16 x 8)."""
    return ConfigDict(
        dict(
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            norm_num_groups=8,
            latent_channels=LATENT_CHANNELS,
        )
    )


def vae_fit_config() -> ConfigDict:
    """The `vae_fit` section: fitting the world's VAE with `fit_vae.py`."""
    f = ConfigDict()
    f.file_pattern = ""  # comma-separated TFRecord globs (empty in train.py: the world's records)
    f.resolution = RESOLUTION
    f.batch_size = 16
    f.num_steps = 300
    f.learning_rate = 2e-3
    f.warmup = 20  # steps of linear warm-up; then cosine decay to 0 at num_steps
    f.kl_weight = 1e-5  # KL to N(0, I), per-element mean, against the per-pixel absolute error
    f.init_logvar = -8.0  # the posterior's initial log-variance (std 0.018)
    f.log_every = 10
    f.checkpoint_every = 100
    f.seed = 0
    f.eval_images = 64  # held-out images for the reconstruction error (and training images
    # for the latent scaling factor)
    f.holdout_every = 20  # every N-th record is held out
    f.shuffle_buffer = 512  # decoded images (12 KiB each at 64 px); saved in every checkpoint
    return f


def encoder_fit_config() -> ConfigDict:
    """The `encoder_fit` section: pre-fitting the image encoder as a classifier of references."""
    f = ConfigDict()
    f.batch_size = 128
    f.num_steps = 1500
    f.learning_rate = 1e-3
    f.warmup = 100  # steps of linear warm-up; then cosine decay to 0 at num_steps
    f.weight_decay = 1e-4
    f.seed = 0
    f.log_every = 50
    f.pool_scenes = 3000  # training scenes whose subjects are cut out as the reader does
    f.pool_drawings = 3000  # training subjects drawn alone on white
    f.drawing_sizes = (24, 128)  # pixels, the side of a drawing's canvas
    f.drawing_margins = (0.0, 0.15)  # of the side, around the subject
    f.eval_scenes = 300  # held-out scenes (their subjects' cut-outs are scored)
    f.eval_drawings = 600  # held-out drawings scored
    f.eval_drawing_size = 128  # pixels: as the benchmark's references
    return f


def unet_config() -> ConfigDict:
    """A small UNet on 16 x 16 latents: cross-attention at 16, 8 and 4 cells (all supervised)."""
    return ConfigDict(
        dict(
            sample_size=LATENT,
            in_channels=LATENT_CHANNELS + 1,  # + the location mask
            out_channels=LATENT_CHANNELS,
            block_out_channels=(64, 128, 128),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(2, 4, 4),
            cross_attention_dim=128,
            use_linear_projection=True,
            upcast_attention=False,
            norm_num_groups=16,
            grounding_dim=128,
            use_adapter=True,
            attention_map_factors=(1, 2, 4),
        )
    )


def clip_config(image_size: int = 0, patch_size: int = 0) -> ConfigDict:
    """A small CLIP tower: text (no sizes given) or vision (image and patch size)."""
    c = dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        hidden_act="gelu",
    )
    if image_size:
        c.update(image_size=image_size, patch_size=patch_size, projection_dim=128)
    return ConfigDict(c)


def get_config() -> ConfigDict:
    c = base_config(RESOLUTION)
    c.workdir = "runs/toy_world"
    c.stages_dir = ""  # where the world and VAE stages live (empty: the work directory)
    c.world = world_config()
    c.vae_fit = vae_fit_config()
    c.encoder_fit = encoder_fit_config()

    c.model.unet = unet_config()
    c.model.vae = vae_model_config()
    c.model.text_encoder = clip_config()
    c.model.image_encoder = clip_config(image_size=32, patch_size=8)
    c.model.grounding = grounding_config(hidden_dim=128, max_subjects=MAX_SUBJECTS)
    # Beyond SPEC: each latent cell's adapters see only the subjects whose box covers it. Without
    # it a UNet trained from scratch does not bind a look to its box within an hour: with two
    # subjects the other's colour is drawn as often as one's own (docs/toy_world.md).
    c.model.box_masked_adapter = True

    c.data.latent_downsample = VAE_DOWNSAMPLE
    c.data.latent_channels = LATENT_CHANNELS
    c.data.attention_map_sizes = tuple(LATENT // f for f in c.model.unet.attention_map_factors)
    c.data.max_subjects = MAX_SUBJECTS
    c.data.subject_size = c.model.image_encoder.image_size
    c.data.background = "white"  # subject references on white, as a user draws them
    c.data.filters.min_mask_fill = 0.0  # stars, rings and triangles fill under 0.6 of their box
    c.data.filters.max_near_white_fraction = 0.25  # white is part of the patterns (up to 22%)
    c.data.batch_size = 16
    c.data.shuffle_buffer = 256

    c.train.full_unet = True
    c.train.num_steps = 500
    c.train.log_every = 50
    c.train.checkpoint_every = 250
    c.train.sample_every = 250
    c.train.sample_prompt = "a star and a heart on the grass"
    c.train.sample_subjects = (
        f"{REFERENCES / 'star.png'}@0.08,0.2,0.5,0.7",
        f"{REFERENCES / 'heart.png'}@0.55,0.3,0.92,0.75",
    )
    c.train.sample_images = 4
    # 2e-3 with an EMA of the weights (the export samples with the EMA): at 3,000 steps it draws
    # the caption's shape and places subjects better than 1e-3, which was better than 5e-4
    # without an EMA; at the default run's 500 steps it is level (docs/benchmarks.md).
    c.optimizer.learning_rate = 2e-3
    c.train.ema_decay = 0.995
    c.optimizer.warmup_steps = 100
    c.sampling.steps = 25
    # s_I: places and renders this world's subjects best (docs/benchmarks.md; SPEC's is 1.5).
    c.sampling.guidance_image = 5.0
    return c
