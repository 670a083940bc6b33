"""`configs/sd2_base.py:reference`: the authors' recipe (docs/authors_recipe.md), setting by setting."""

import pytest
from absl import flags
from ml_collections import config_flags

from configs import sd2_base, toy_world
from sdjax.input_pipeline import pipeline
from sdjax.sampling.base_model import OUTSIDE_WINDOW


@pytest.fixture(scope="module")
def reference():
    return sd2_base.get_config("reference")


def test_reference_variant_holds_the_authors_settings(reference):
    assert reference.optimizer.grad_clip_norm == 0.0  # no clipping
    assert reference.train.attention_normalisation == "per_sample"
    assert reference.data.entity_token == "last"
    assert reference.data.crop_contains == "all"
    assert reference.data.filters.box_fill == "label_map"
    assert tuple(reference.data.filters.box_labels) == (2, 5)
    assert reference.data.background in ("procedural", "folder")  # an object-free set
    assert reference.data.dropout.subjects == 0.0  # grounding tokens never dropped
    assert reference.model.new_layer_init == "torch_linear"
    sampling = reference.sampling
    assert (sampling.sampler, sampling.steps) == ("pndm", 50)
    assert (sampling.guidance_text, sampling.guidance_image) == (7.5, 1.5)
    assert sampling.outside_window == "base_model" and sampling.outside_window in OUTSIDE_WINDOW
    pipeline._check_choices(reference.data)  # every data choice is one the reader knows


def test_plain_sd2_base_and_the_toy_world_keep_sdjax_defaults():
    for config in (sd2_base.get_config(), toy_world.get_config()):
        assert config.optimizer.grad_clip_norm == 1.0
        assert config.train.attention_normalisation == "per_token"
        assert config.data.crop_contains == "selected"
        assert config.data.filters.box_fill == "own_mask"
        assert config.model.new_layer_init == "lecun_normal"
        assert config.sampling.outside_window == "fine_tuned"
        assert config.data.entity_token == "last"  # the authors' (labels of one token: no change)
    with pytest.raises(ValueError, match="variant 'authors'"):
        sd2_base.get_config("authors")


def test_the_variant_loads_from_the_command_line():
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values)
    values(["prog", "--config=configs/sd2_base.py:reference"])
    assert values.config.optimizer.grad_clip_norm == 0.0
    assert values.config.workdir == "runs/sd2_base_reference"
