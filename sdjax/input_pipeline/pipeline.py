"""The tf.data input pipeline of Subject-Diffusion training (SPEC §2-§3).

Stages: this host's TFRecord files (split by process, shuffled, repeated per epoch) -> interleaved
reading with a per-file integrity check -> record shuffle -> enumerate (the stream index seeds
each example) -> parallel per-example processing (parse, checks, filters, crop, masks, prompt ids,
dropout flags) -> a running count of skip reasons -> filter (warning once per file and reason of
skipped bad input) -> batch -> per-batch subject images -> prefetch.

Every random draw is stateless, seeded by (seed, process index, stream index), and every stage is
deterministic, so a seed fixes the batches whatever the parallelism; the tf.data iterator state
(shuffle buffer and position included) goes into the training checkpoint (`iterator_state`).

Where the reference leaves room, the reader does this:
- Mask fill (`filters.box_fill`): "own_mask" is the entity's own mask pixels inside its
  (integer-truncated) box over the box area; "label_map" is the reference code's check over the
  label image painted from every entity's mask in record order (`filters.label_map_fills_box`).
- Crop: the square keeps every box of the image (`crop_contains="all"`, the reference code) or
  only the subjects kept by the filters (top `max_subjects`, "selected"); when none does, the
  centre square is used and boxes are clipped to it before the 200 px² check.
- Prompt: ids as `sdjax.tokenizer.assemble_template`; a subject whose `sks` falls past the 77-id
  limit loses its slot (its partial clause stays in the ids, as plain truncation leaves it).
- Random background: the next example of the batch (cyclically), uniform noise in a batch of one;
  the other kinds of `data.background` are in `backgrounds.py`.
- Masks are decoded only for entities that pass the mask-free filters (every entity's with
  `filters.box_fill="label_map"`).
- A box-only entity (no mask) takes its filled box as its mask with `boxes_without_masks="box"`
  (it passes the fill filter; its attention-loss target, subject cut-out and segmentation-mode
  location mask are the box); with "skip" it is never selected (`BOX_ONLY` when that leaves no
  subject).
"""

from __future__ import annotations

import jax
import ml_collections
import tensorflow as tf

from sdjax import geometry
from sdjax.input_pipeline import augment, backgrounds, contract, decode, filters, tokens
from sdjax.input_pipeline.config import default_config  # noqa: F401 (re-exported)
from sdjax.input_pipeline.files import list_files
from sdjax.input_pipeline.iterator import PipelineIterator
from sdjax.input_pipeline.reasons import BAD_INPUT, NUM_REASONS, Reason
from sdjax.input_pipeline.skip_warnings import SkipWarnings
from sdjax.tokenizer import ENTITY_TOKENS, PLACEHOLDER_ID

# TFRecord framing around each record's bytes: length (8), length CRC (4), data CRC (4).
TFRECORD_OVERHEAD = 16
# Crop draws by `data.crop`: "centred" takes the middle of the admissible square crops.
CENTRED_CROP = (0.5, 0.5)
CROP_DRAWS = ("random", "centred")
CROP_CONTAINS = ("selected", "all")  # the boxes the square crop must hold
# What stands in for the mask of a box-only entity (`schema.NO_MASK`): its filled box, or nothing
# (the entity is dropped).
BOXES_WITHOUT_MASKS = ("box", "skip")
# The box-fill filter: the entity's own mask in its box, or the reference code's check over the
# image's label map (`filters.label_map_fills_box`).
BOX_FILLS = ("own_mask", "label_map")


def output_signature(cfg: ml_collections.ConfigDict) -> dict[str, tf.TensorSpec]:
    """Shapes and dtypes of one training example out of the reader (`contract.example_shapes`)."""
    return {k: tf.TensorSpec(v.shape, v.dtype) for k, v in contract.example_shapes(cfg).items()}


def _check_choices(cfg: ml_collections.ConfigDict) -> None:
    if cfg.boxes_without_masks not in BOXES_WITHOUT_MASKS:
        raise ValueError(
            f"data.boxes_without_masks={cfg.boxes_without_masks!r}; "
            f"known: {sorted(BOXES_WITHOUT_MASKS)}"
        )
    if cfg.filters.box_fill not in BOX_FILLS:
        raise ValueError(
            f"data.filters.box_fill={cfg.filters.box_fill!r}; known: {list(BOX_FILLS)}"
        )
    if cfg.background not in backgrounds.BACKGROUNDS:
        raise ValueError(
            f"data.background={cfg.background!r}; known: {list(backgrounds.BACKGROUNDS)}"
        )
    if cfg.background == "folder":
        backgrounds.background_files(cfg.background_dir)  # names a missing or empty folder now
    if cfg.crop_contains not in CROP_CONTAINS:
        raise ValueError(f"data.crop_contains={cfg.crop_contains!r}; known: {list(CROP_CONTAINS)}")
    if cfg.entity_token not in ENTITY_TOKENS:
        raise ValueError(f"data.entity_token={cfg.entity_token!r}; known: {list(ENTITY_TOKENS)}")
    if cfg.crop not in CROP_DRAWS:
        raise ValueError(f"data.crop={cfg.crop!r}; known: {sorted(CROP_DRAWS)}")
    if cfg.cached_latents and cfg.crop != "centred":
        raise ValueError(
            "data.cached_latents needs data.crop='centred': the latents were encoded from that "
            f"crop (data.crop={cfg.crop!r})"
        )


def _transformed_signature(cfg: ml_collections.ConfigDict) -> dict[str, tf.TensorSpec]:
    """What `_transform` returns: the training keys it computes, and the full-size subject masks."""
    spec = output_signature(cfg)
    for key in ("subject_pixels", "drop_text", "drop_mask", "drop_subjects"):
        del spec[key]
    r = cfg.resolution
    spec["_masks"] = tf.TensorSpec([cfg.max_subjects, r, r], tf.bool)
    return spec


def _pad_slots(values: tf.Tensor, slots: int) -> tf.Tensor:
    """Zero-pad the leading axis of `values` to `slots`."""
    pad = [[0, slots - tf.shape(values)[0]]] + [[0, 0]] * (values.shape.rank - 1)
    return tf.pad(values, pad)


def _first_failure(checks: list[tuple[tf.Tensor, Reason]]) -> tf.Tensor:
    """The reason of the first failed check (`ok`, reason) in order, or OK."""
    reason = tf.constant(int(Reason.OK))
    for ok, code in reversed(checks):
        reason = tf.where(ok, reason, int(code))
    return reason


def _dropout_flags(u: tf.Tensor, cfg: ml_collections.ConfigDict) -> dict[str, tf.Tensor]:
    """Classifier-free dropout flags from two uniform draws."""
    d = cfg.dropout
    return {
        "drop_text": u[0] < d.text + d.text_and_mask,
        "drop_mask": (d.text <= u[0]) & (u[0] < d.text + d.text_and_mask + d.mask),
        "drop_subjects": u[1] < d.subjects,
    }


def _select(element: dict, cfg: ml_collections.ConfigDict) -> tuple[tf.Tensor, dict]:
    """Parse, decode, validate and pick the subjects of one record: `(reason, selection)`.

    Only the masks of entities that pass the mask-free filters are decoded.
    """
    f = cfg.filters
    # The end-of-file marker of a damaged file holds no record: not parsed, so TensorFlow logs
    # no parse error for it (the skip warning names the file).
    parsed, features = tf.cond(
        element["file_reason"] == int(Reason.OK),
        lambda: decode.parse_record(element["record"]),
        decode.unparsed_record,
    )
    image_ok, image = decode.decode_image(features)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    boxes = tf.reshape(features["entities/box"], [-1, 4])
    boxes_ok = tf.reduce_all(geometry.boxes_inside(boxes, width, height))
    scores = features["entities/score"]
    candidates = filters.entity_candidates(
        boxes, scores, features["entities/label"], features["caption"], width * height, f
    ) & (parsed & image_ok & boxes_ok)
    box_only = tf.strings.length(features["entities/mask"]) == 0
    usable = candidates & ~box_only if cfg.boxes_without_masks == "skip" else candidates
    candidate_index = tf.where(usable)[:, 0]
    # The label-map check reads every entity's mask; the own-mask check only the candidates'.
    decoded = usable | ~box_only if f.box_fill == "label_map" else usable
    masks_decoded, masks_sized, masks = decode.decode_masks(
        tf.boolean_mask(features["entities/mask"], decoded), height, width
    )
    mask_slot = tf.cumsum(tf.cast(decoded, tf.int32)) - 1
    candidate_boxes = tf.gather(boxes, candidate_index)
    if f.box_fill == "label_map":
        fills = filters.label_map_fills_box(
            masks, candidate_boxes, f.min_mask_fill, tuple(f.box_labels)
        )
    else:
        candidate_masks = tf.gather(masks, tf.gather(mask_slot, candidate_index))
        fills = filters.mask_fills_box(candidate_masks, candidate_boxes, f.min_mask_fill)
    # The filled box that stands in for a missing mask fills its box.
    fills |= tf.gather(box_only, candidate_index)
    eligible = tf.scatter_nd(candidate_index[:, None], fills, tf.shape(usable, tf.int64))
    selected = filters.rank_and_select(boxes, scores, eligible, f.max_overlap, cfg.max_subjects)
    near_white = filters.near_white_fraction(image, f.near_white_threshold)
    latents_ok, moments = tf.constant(True), None
    if cfg.cached_latents:
        latents_ok, moments = decode.decode_latents(
            element["record"], cfg.resolution, contract.latent_moments_shape(cfg)
        )
    reason = _first_failure(
        [
            (element["file_reason"] == int(Reason.OK), Reason.CORRUPT_FILE),
            (parsed, Reason.BAD_RECORD),
            (image_ok, Reason.CORRUPT_IMAGE),
            (boxes_ok, Reason.BAD_BOX),
            (masks_decoded, Reason.BAD_MASK),
            (masks_sized, Reason.MASK_SIZE),
            (near_white <= f.max_near_white_fraction, Reason.NEAR_WHITE),
            (
                tf.reduce_all(features["caption/ids"] != PLACEHOLDER_ID),
                Reason.PLACEHOLDER_IN_CAPTION,
            ),
            (
                (tf.size(selected) > 0) | ~tf.reduce_any(candidates & ~usable),
                Reason.BOX_ONLY,
            ),
            (tf.size(selected) > 0, Reason.NO_SUBJECT),
            (latents_ok, Reason.NO_LATENTS),
        ]
    )
    selection = {
        "image": image,
        "boxes": tf.gather(boxes, selected),
        # What the square crop must hold: every box of the image, or only the selected ones.
        "contain": boxes if cfg.crop_contains == "all" else tf.gather(boxes, selected),
        "masks": tf.gather(masks, tf.gather(mask_slot, selected)),
        "box_only": tf.gather(box_only, selected),
        "entities": selected,
        "caption_ids": features["caption/ids"],
        "clause_ids": features["entities/clause_ids"],
        "clause_lengths": features["entities/clause_length"],
    }
    if moments is not None:
        selection["latent_moments"] = moments
    return reason, selection


def _transform(selection: dict, u: tf.Tensor, cfg: ml_collections.ConfigDict):
    """Crop, masks and prompt of a selected record: `(reason, example)`, NO_SUBJECT when no
    subject survives the crop or the prompt's truncation."""
    r, slots = cfg.resolution, cfg.max_subjects
    target = augment.crop_target(
        selection["image"],
        selection["masks"],
        selection["boxes"],
        u,
        r,
        cfg.fill_mask_holes,
        selection["contain"],
    )
    survivors = tf.where(filters.crop_box_ok(target.boxes * r, cfg.filters))[:, 0]
    prompt = tokens.template_ids(
        selection["caption_ids"],
        selection["clause_ids"],
        selection["clause_lengths"],
        tf.gather(selection["entities"], survivors),
        cfg.pad_id,
        entity_token=cfg.entity_token,
    )
    kept = tf.boolean_mask(survivors, prompt.fits)
    count = tf.size(kept)
    valid = tf.range(slots) < count
    boxes = _pad_slots(tf.gather(target.boxes, kept), slots)
    box_only = _pad_slots(tf.gather(selection["box_only"], kept), slots)
    masks = tf.where(
        box_only[:, None, None],
        geometry.box_regions(boxes, r),
        _pad_slots(tf.gather(target.masks, kept), slots),
    )
    example = {
        "image": target.image,
        "location_mask": augment.location_mask(
            boxes, masks, valid, box_only, cfg.location_mask, r // cfg.latent_downsample
        ),
        "subject_boxes": boxes,
        "subject_valid": valid,
        "input_ids": prompt.ids,
        "placeholder_positions": _pad_slots(
            tf.boolean_mask(prompt.placeholder_positions, prompt.fits), slots
        ),
        "entity_positions": _pad_slots(
            tf.boolean_mask(prompt.entity_positions, prompt.fits), slots
        ),
        "_masks": masks,
    }
    if "latent_moments" in selection:
        example["latent_moments"] = selection["latent_moments"]
    for size, resized in augment.attention_masks(masks, cfg.attention_map_sizes).items():
        example[f"subject_masks_{size}"] = resized
    reason = tf.where(count > 0, int(Reason.OK), int(Reason.NO_SUBJECT))
    return reason, example


def process_example(
    index: tf.Tensor, element: dict, base_seed: tf.Tensor, cfg: ml_collections.ConfigDict
) -> dict[str, tf.Tensor]:
    """One record at stream position `index` -> one example (zeros and a reason when skipped)."""
    seed = tf.random.experimental.stateless_fold_in(base_seed, index)
    crop_seed, dropout_seed, subject_seed, noise_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4)
    )
    reason, selection = _select(element, cfg)
    signature = _transformed_signature(cfg)

    def transform():
        u = tf.random.stateless_uniform([2], crop_seed) if cfg.crop == "random" else CENTRED_CROP
        code, example = _transform(selection, u, cfg)
        return code, {k: tf.ensure_shape(v, signature[k].shape) for k, v in example.items()}

    def skip():
        return reason, {k: tf.zeros(s.shape, s.dtype) for k, s in signature.items()}

    reason, example = tf.cond(reason == int(Reason.OK), transform, skip)
    example.update(_dropout_flags(tf.random.stateless_uniform([2], dropout_seed), cfg))
    example["_draws"] = tf.random.stateless_uniform(
        [cfg.max_subjects, augment.SUBJECT_DRAWS], subject_seed
    )
    example["_noise_seed"] = noise_seed
    example["_reason"] = reason
    example["_file"] = element["file"]
    example["_record"] = element["record_index"]
    return example


def finish_batch(batch: dict, cfg: ml_collections.ConfigDict) -> dict[str, tf.Tensor]:
    """Add the subject images to a batch and drop what only they needed."""
    out = {k: v for k, v in batch.items() if k not in ("_masks", "_draws", "_noise_seed")}
    out["subject_pixels"] = augment.subject_images(
        batch["image"],
        batch["_masks"],
        batch["subject_boxes"],
        batch["subject_valid"],
        batch["_draws"],
        batch["_noise_seed"][0],
        cfg,
    )
    return out


def host_files(files: list[str], process_index: int, process_count: int) -> list[str]:
    """This host's share of the files (every process_count-th, from process_index)."""
    mine = files[process_index::process_count]
    if not mine:
        raise ValueError(
            f"{len(files)} files cannot feed {process_count} processes: process {process_index} "
            "gets none; write more shards"
        )
    return mine


def read_file(path: tf.Tensor, size: tf.Tensor) -> tf.data.Dataset:
    """Records of one TFRecord file with their place, and one CORRUPT_FILE marker when the file
    ends in an error: the bytes of the records read do not add up to the file size."""
    numbered = tf.data.TFRecordDataset(path).ignore_errors().enumerate()
    end = tf.data.Dataset.from_tensors((tf.constant(-1, tf.int64), tf.constant(b"")))

    def account(state, item):
        consumed, count = state
        index, record = item
        at_end = index < 0
        read = tf.cast(~at_end, tf.int64)
        consumed += read * (tf.cast(tf.strings.length(record), tf.int64) + TFRECORD_OVERHEAD)
        count += read
        damaged = at_end & (consumed != size)
        element = {
            "record": record,
            "file": path,
            "record_index": tf.where(at_end, count, index),
            "file_reason": tf.where(damaged, int(Reason.CORRUPT_FILE), int(Reason.OK)),
        }
        return (consumed, count), (~at_end | damaged, element)

    zero = tf.constant(0, tf.int64)
    marked = numbered.concatenate(end).scan((zero, zero), as_written(account))
    return marked.filter(as_written(lambda keep, _: keep)).map(
        as_written(lambda _, element: element)
    )


def _count_reasons(counts: tf.Tensor, example: dict):
    """Running per-reason count of the records seen, attached to each example."""
    counts += tf.one_hot(example["_reason"], NUM_REASONS, dtype=tf.int64)
    return counts, {**example, "_counts": counts}


def _delivered(example: dict, strict: bool, warnings: SkipWarnings) -> tf.Tensor:
    """Whether an example goes on: OK ones, and in strict mode bad input (the iterator raises).

    Bad input skipped here is named on the console (`skip_warnings`)."""
    reason = example["_reason"]
    bad = tf.reduce_any(tf.equal(reason, [int(code) for code in sorted(BAD_INPUT)]))
    delivered = (reason == int(Reason.OK)) | (bad & strict)
    warned = tf.cond(
        bad & ~delivered,
        lambda: warnings.in_graph(example["_file"], reason, example["_record"]),
        lambda: tf.constant(True),
    )
    return delivered & warned


def as_written(fn):
    """Trace `fn` as written: it has no Python control flow on tensors for autograph to convert."""
    return tf.autograph.experimental.do_not_convert(fn)


def hide_accelerators_from_tensorflow() -> None:
    """Keep TensorFlow off GPUs so that it never takes accelerator memory from JAX."""
    if tf.config.get_visible_devices("GPU"):
        tf.config.set_visible_devices([], "GPU")


def build_dataset(
    cfg: ml_collections.ConfigDict,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tf.data.Dataset:
    """Batched training examples of this host (per-host batch: batch_size / process_count)."""
    hide_accelerators_from_tensorflow()
    _check_choices(cfg)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if cfg.batch_size % process_count:
        raise ValueError(
            f"data.batch_size {cfg.batch_size} is not divisible by {process_count} processes"
        )
    files = host_files(list_files(cfg.file_pattern), process_index, process_count)
    sizes = [tf.io.gfile.stat(f).length for f in files]
    ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(sizes, tf.int64)))
    if cfg.shuffle_files:
        ds = ds.shuffle(len(files), seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.repeat(cfg.num_epochs)
    ds = ds.interleave(
        as_written(read_file),
        cycle_length=min(cfg.interleave_cycle_length, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if cfg.shuffle_buffer > 1:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
    base_seed = tf.constant([cfg.seed, process_index], tf.int64)
    ds = ds.enumerate().map(
        as_written(lambda index, element: process_example(index, element, base_seed, cfg)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.scan(tf.zeros([NUM_REASONS], tf.int64), as_written(_count_reasons))
    warnings = SkipWarnings()
    ds = ds.filter(as_written(lambda example: _delivered(example, cfg.strict, warnings)))
    ds = ds.batch(cfg.batch_size // process_count, drop_remainder=True)
    ds = ds.map(
        as_written(lambda batch: finish_batch(batch, cfg)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.prefetch(cfg.prefetch_batches)
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = True
    # Only `decode.try_apply` looks stateful to the checkpoint check; all randomness is stateless.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return ds.with_options(options)


def make_iterator(
    cfg: ml_collections.ConfigDict,
    process_index: int | None = None,
    process_count: int | None = None,
) -> PipelineIterator:
    """Iterator of numpy batches over `build_dataset`, checkpointable with `iterator_state`."""
    return PipelineIterator(build_dataset(cfg, process_index, process_count), cfg.strict)
