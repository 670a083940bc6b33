"""TensorFlow (the input pipeline) never takes GPU memory from JAX: the installed build has no
CUDA, and the pipeline hides any GPU it would see before building the dataset."""

import tensorflow as tf

from data.build_sample import build_sample_records
from sdjax.input_pipeline import pipeline
from tests.training_config import micro_config


def test_tensorflow_build_has_no_cuda():
    assert not tf.test.is_built_with_cuda(), "the tensorflow-cpu pin was replaced"


def test_building_the_dataset_hides_gpus_from_tensorflow(monkeypatch, tmp_path):
    records = ",".join(build_sample_records(tmp_path))
    fake_gpu = tf.config.LogicalDevice("/physical_device:GPU:0", "GPU")
    visible = {"GPU": [fake_gpu]}
    monkeypatch.setattr(tf.config, "get_visible_devices", lambda kind=None: visible.get(kind, []))
    monkeypatch.setattr(
        tf.config, "set_visible_devices", lambda devices, kind=None: visible.update({kind: devices})
    )
    pipeline.build_dataset(micro_config(records).data)
    assert visible["GPU"] == []
