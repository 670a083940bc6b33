"""The reader's settings (`data` section of a run config), kept apart from TensorFlow so that a
config file loads without it."""

from __future__ import annotations

import ml_collections

from sdjax.tokenizer import EOS_ID

REFERENCE_RESOLUTION = 512


def default_config(resolution: int = REFERENCE_RESOLUTION) -> ml_collections.ConfigDict:
    """Data config of the reference recipe; sizes tied to the resolution are derived from it.

    `filters.min_box_area_px` is SPEC's 200 px² at 512 px, scaled with the area at other sizes.
    """
    c = ml_collections.ConfigDict()
    c.file_pattern = ""  # glob(s), comma-separated, of TFRecord files in the schema of `schema.py`
    c.batch_size = 8  # global; each host gets batch_size / process_count
    c.resolution = resolution
    c.latent_downsample = 8  # location mask at resolution / latent_downsample
    c.latent_channels = 4  # VAE latent channels (cached latents hold twice as many moments)
    c.crop = "random"  # random | centred: which square crop keeping every box (augment.py)
    # The boxes the square crop keeps: "selected" subjects | "all" of the image (reference code)
    c.crop_contains = "selected"
    c.cached_latents = False  # read VAE moments cached in the records; needs crop="centred"
    c.attention_map_sizes = (resolution // 16, resolution // 32, resolution // 64)
    c.subject_size = 224
    c.max_subjects = 2
    c.location_mask = "box"  # box | segmentation
    # The label token the attention loss supervises: "last" sub-token (reference code) | "first".
    c.entity_token = "last"
    # Entities annotated with a box only (no mask): "box" uses the filled box as their mask
    # (location mask, attention-loss target, subject cut-out); "skip" drops them.
    c.boxes_without_masks = "box"
    # Behind the training subject images: white | random (another image of the batch; noise in a
    # batch of 1) | noise | procedural (drawn gradients and textures) | folder (an image of
    # background_dir per subject, as the reference code's BG-20k); see backgrounds.py
    c.background = "random"
    c.background_dir = ""
    c.fill_mask_holes = True  # the reference's row/column cavity filling of segmentation masks
    c.pad_id = EOS_ID  # 49407 for SD 1.x tokenizers, 0 for SD 2.x
    c.seed = 0
    c.strict = False  # raise a DataError on bad input instead of counting and skipping it
    c.num_epochs = ml_collections.config_dict.placeholder(int)  # None: repeat forever
    c.shuffle_files = True
    c.shuffle_buffer = 512  # encoded records; every iterator checkpoint holds them too
    c.interleave_cycle_length = 16  # files read at once; fixed, so the order is too
    c.prefetch_batches = 2

    c.filters = ml_collections.ConfigDict()
    c.filters.min_area_ratio = 0.08
    c.filters.max_area_ratio = 0.7
    c.filters.min_aspect = 0.3
    c.filters.max_aspect = 3.0
    c.filters.min_score = 0.3
    c.filters.min_mask_fill = 0.6
    # own_mask: the entity's mask fills min_mask_fill of its box | label_map: the reference
    # code's check over all entities' masks and the background (filters.label_map_fills_box)
    c.filters.box_fill = "own_mask"
    c.filters.box_labels = (2, 5)  # label_map: distinct labels in the box, background included
    c.filters.max_overlap = 0.8
    c.filters.min_box_area_px = 200.0 * (resolution / REFERENCE_RESOLUTION) ** 2
    c.filters.near_white_threshold = 0.9
    c.filters.max_near_white_fraction = 0.1

    c.augment = ml_collections.ConfigDict()
    c.augment.flip_probability = 0.5
    c.augment.max_rotation_degrees = 10.0
    c.augment.perspective_distortion = 0.5
    c.augment.perspective_probability = 0.5
    c.augment.fill_value = 0.0  # canvas outside the rotated/warped image, in [0, 1] pixel units
    c.augment.clip_mean = (0.48145466, 0.4578275, 0.40821073)
    c.augment.clip_std = (0.26862954, 0.26130258, 0.27577711)

    # Classifier-free dropout, r ~ U(0, 1): [0, text) text; [text, text + text_and_mask) both;
    # then [.., + mask) mask only. Subjects are dropped by an independent draw.
    c.dropout = ml_collections.ConfigDict()
    c.dropout.text = 0.05
    c.dropout.text_and_mask = 0.05
    c.dropout.mask = 0.05
    c.dropout.subjects = 0.05
    return c
