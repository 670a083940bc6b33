"""Why the reader skips a record: one code per cause, counted in the pipeline and reported."""

from __future__ import annotations

import enum


class Reason(enum.IntEnum):
    """Outcome of reading one record; every code but `OK` skips the record."""

    OK = 0
    # Bad input: skipped and counted, or a `DataError` in strict mode.
    CORRUPT_FILE = 1  # the TFRecord file is truncated or fails its checksums from here on
    BAD_RECORD = 2  # not a schema-version Example, or entity lists of different lengths
    CORRUPT_IMAGE = 3  # image bytes do not decode, or decode to another size than recorded
    BAD_MASK = 4  # an entity mask does not decode
    MASK_SIZE = 5  # an entity mask is not the image's size
    BAD_BOX = 6  # an entity box has no area or leaves the image
    # Training-time selection (SPEC §3): always skipped, never an error.
    NEAR_WHITE = 7  # too many near-white pixels
    PLACEHOLDER_IN_CAPTION = 8  # the caption already holds the placeholder token
    NO_SUBJECT = 9  # no entity passes the filters (or none is left after the crop)
    # Bad input, only with `cached_latents`.
    NO_LATENTS = 10  # no cached latents at the configured resolution (data/cache_latents.py)
    # Training-time selection, only with `boxes_without_masks="skip"`.
    BOX_ONLY = 11  # no subject kept, and an entity passing the filters had a box and no mask


NUM_REASONS = len(Reason)
BAD_INPUT = frozenset(
    {
        Reason.CORRUPT_FILE,
        Reason.BAD_RECORD,
        Reason.CORRUPT_IMAGE,
        Reason.BAD_MASK,
        Reason.MASK_SIZE,
        Reason.BAD_BOX,
        Reason.NO_LATENTS,
    }
)


# What each kind of bad input means, for messages that name a skipped record.
BAD_INPUT_MEANING = {
    Reason.CORRUPT_FILE: "the file is truncated or fails its checksums from this record on",
    Reason.BAD_RECORD: "not an Example of this schema version, or entity lists that disagree",
    Reason.CORRUPT_IMAGE: "the image does not decode, or decodes to another size than recorded",
    Reason.BAD_MASK: "an entity mask does not decode",
    Reason.MASK_SIZE: "an entity mask is not the image's size",
    Reason.BAD_BOX: "an entity box has no area or leaves the image",
    Reason.NO_LATENTS: "no cached latents at data.resolution",
}


class DataError(ValueError):
    """A bad record met in strict mode."""


def describe_counts(counts) -> dict[str, int]:
    """`{reason name: count}` of the nonzero entries of a per-reason count vector (OK excluded)."""
    return {Reason(code).name.lower(): int(n) for code, n in enumerate(counts) if code and int(n)}
