"""The record schema and the dataset builders: every input format, bad input, Beam, determinism."""

import numpy as np
import pytest
import tensorflow as tf

from sdjax import tokenizer as tok
from sdjax.input_pipeline import schema


def _example(num_entities: int) -> schema.ImageExample:
    clip = tok.load_tokenizer()
    mask = np.zeros((6, 8), bool)
    mask[1:4, 2:7] = True
    entities = tuple(
        schema.Entity(
            label=label,
            box=(2.0, 1.0, 7.0, 4.0),
            mask_png=schema.encode_mask_png(mask),
            clause_ids=tuple(tok.clause_ids(clip, label)),
            score=0.5,
        )
        for label in ["cat", "teddybear"][:num_entities]
    )
    return schema.ImageExample(
        key="img-1",
        image_encoded=b"\x89PNG fake bytes",
        image_format="png",
        height=6,
        width=8,
        caption="a cat with a teddybear",
        caption_ids=tuple(tok.caption_ids(clip, "a cat with a teddybear")),
        entities=entities,
    )


@pytest.mark.parametrize("num_entities", [0, 2])
def test_schema_round_trip(num_entities):
    example = _example(num_entities)
    data = schema.encode_example(example)
    assert data == schema.encode_example(example)
    assert schema.decode_example_py(data) == example
    parsed = tf.io.parse_single_example(data, schema.FEATURE_SPEC)
    assert int(parsed["schema_version"]) == schema.SCHEMA_VERSION
    assert parsed["entities/box"].shape == (4 * num_entities,)
    assert list(parsed["entities/clause_length"].numpy()) == [
        len(e.clause_ids) for e in example.entities
    ]
    if num_entities:
        assert parsed["entities/clause_ids"].numpy()[4] == tok.PLACEHOLDER_ID
        mask = schema.decode_mask_png(parsed["entities/mask"].numpy()[1])
        assert mask.shape == (6, 8) and mask.sum() == 15


def test_schema_refuses_bad_values():
    with pytest.raises(ValueError, match="must end with 48136"):
        schema.Entity(label="cat", box=(0, 0, 1, 1), mask_png=b"", clause_ids=(267, 518))
    with pytest.raises(ValueError, match="'gif'"):
        schema.ImageExample("k", b"", "gif", 1, 1, "c", (), ())
