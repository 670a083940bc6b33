"""Template prompt ids assembled in TensorFlow from a record's pre-tokenized ids.

The same assembly as `sdjax.tokenizer.assemble_template` (BOS + caption + the clause of each kept
subject + EOS, truncated keeping EOS, padded), without a Python tokenizer in the input pipeline.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from sdjax.tokenizer import BOS_ID, EOS_ID, MAX_LENGTH, entity_position


class TemplateIds(NamedTuple):
    """Prompt ids, and per selected subject its `sks` index, supervised label-token index (see
    `sdjax.tokenizer.entity_position`), and whether its `sks` survived truncation (positions are 0
    where it did not)."""

    ids: tf.Tensor
    placeholder_positions: tf.Tensor
    entity_positions: tf.Tensor
    fits: tf.Tensor


def template_ids(
    caption_ids: tf.Tensor,
    clause_ids: tf.Tensor,
    clause_lengths: tf.Tensor,
    selected: tf.Tensor,
    pad_id: int,
    max_length: int = MAX_LENGTH,
    entity_token: str = "last",
) -> TemplateIds:
    """Template prompt of the `selected` entities (in that order).

    caption_ids: (L,) caption ids without BOS/EOS; clause_ids: every entity's clause ids, one after
    the other, `clause_lengths` (N,) long; selected: (K,) entity indices.
    """
    clauses = tf.RaggedTensor.from_row_lengths(clause_ids, clause_lengths)
    chosen = tf.gather(clauses, selected)
    lengths = tf.cast(chosen.row_lengths(), tf.int32)
    start = 1 + tf.size(caption_ids)
    ends = start + tf.cumsum(lengths)
    placeholder = ends - 1
    fits = placeholder < max_length - 1
    entity = entity_position(ends - lengths, placeholder, entity_token)
    ids = tf.concat(
        [[BOS_ID], tf.cast(caption_ids, tf.int32), tf.cast(chosen.flat_values, tf.int32)], axis=0
    )
    ids = tf.concat([ids[: max_length - 1], [EOS_ID]], axis=0)
    ids = tf.pad(ids, [[0, max_length - tf.size(ids)]], constant_values=pad_id)
    ids = tf.ensure_shape(ids, [max_length])
    return TemplateIds(
        ids=ids,
        placeholder_positions=tf.where(fits, placeholder, 0),
        entity_positions=tf.where(fits, entity, 0),
        fits=fits,
    )
