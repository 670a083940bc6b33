"""DreamBench evaluation (`python -m sdjax.eval dreambench`): the protocol's numbers.

Generation follows the authors' test.py (a random box of 210-280 px at an offset of 10-200 px in
a 512 px image, seeded) or test_subject.py (the subject's own box, jittered), as `layout` says;
metrics follow DreamBooth's protocol (DINO ViT-S/16 CLS; CLIP image and text embeddings), each
generated image against every real image of its subject, averaged per subject, then over subjects.
"""

from ml_collections import ConfigDict, config_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.mesh = ConfigDict(dict(data=-1))  # devices of each host a batch is split over (-1: all)
    c.distributed = (
        False  # multi-host: jax.distributed.initialize() (also when the env names a coordinator)
    )

    c.dataset = ConfigDict(
        dict(
            live_classes=("cat", "dog"),  # subjects of these classes take the live prompt list
            reference_index=0,  # the reference photo: this readable image of the folder (sorted)
            mask_folder="masks",  # <subject>/masks/<stem>.png cuts the reference out when present
            image_suffixes=(".jpg", ".jpeg", ".png", ".webp"),
        )
    )

    c.generation = ConfigDict(
        dict(
            images_per_prompt=4,  # K: 30 subjects x 25 prompts x 4 = 3,000 images
            seed=0,
            layout="random",  # "random" (test.py) or "own" (test_subject.py)
            canvas_px=512,  # the random box's pixel ranges are given in a canvas of this size
            box_size_px=(210, 280),
            box_offset_px=(10, 200),
            own_box_jitter=0.05,  # shift of the subject's own box, a fraction of the image
            chunk=16,  # requests per pipeline call; written to disk after each
            steps=config_dict.placeholder(int),  # unset: the export's sampling config
            scheduler=config_dict.placeholder(str),
            guidance_text=config_dict.placeholder(float),
            guidance_image=config_dict.placeholder(float),
            height=config_dict.placeholder(int),  # unset: the training resolution
            width=config_dict.placeholder(int),
            batch_size=config_dict.placeholder(int),
        )
    )

    c.metrics = ConfigDict(
        dict(
            batch_size=32,
            dino=ConfigDict(dict(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)),
            clip=ConfigDict(dict(resize=224, crop=224, mean=CLIP_MEAN, std=CLIP_STD)),
        )
    )

    # (method, DINO, CLIP-I, CLIP-T) as published; None where a paper gives no number.
    c.published = ConfigDict(
        dict(
            single=(
                ("Subject-Diffusion (paper)", 0.711, 0.787, 0.293),
                ("UNO", 0.760, 0.835, 0.304),
                ("IP-Adapter SD 1.5", 0.667, 0.813, 0.289),
                ("real images (ceiling)", 0.774, 0.885, None),
            ),
            two=(
                ("Subject-Diffusion (paper)", 0.506, 0.696, 0.310),
                ("UNO", 0.542, 0.733, 0.322),
            ),
        )
    )
    return c
