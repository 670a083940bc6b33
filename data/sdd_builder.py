"""tensorflow-datasets builder of sdjax records: in-process, or on Apache Beam for large sources.

The tfds features are the schema's fields under their own names, so the shards tfds writes are
plain `tf.train.Example` files that `sdjax.input_pipeline.schema.FEATURE_SPEC` parses. tfds'
own serializer orders a record's features differently from run to run; every record is therefore
re-encoded through `schema.encode_example` on its way to disk, which makes builds byte-identical.

Shards: `{data_dir}/sdd/1.0.0/sdd-{split}.tfrecord-{i:05d}-of-{n:05d}`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from etils import epath
from tqdm import tqdm

from data.layout import VERSION, shard_files
from data.records import (
    BuildOptions,
    Outcome,
    Report,
    Source,
    boxes_only,
    check_unique_keys,
    process_unit,
)
from sdjax.input_pipeline import schema

METRICS_NAMESPACE = "sdjax_records"
_IMAGE_SKIP = "image skipped: "
_ENTITY_SKIP = "entity skipped: "


def tfds_features() -> tfds.features.FeaturesDict:
    """The schema's fields as tfds features (lists are 1-D tensors of unknown length)."""
    return tfds.features.FeaturesDict(
        {
            f.name: tfds.features.Tensor(shape=() if f.scalar else (None,), dtype=f.dtype)
            for f in schema.FIELDS
        }
    )


def tfds_example(example: schema.ImageExample) -> dict[str, Any]:
    """The record as the feature dict tfds encodes."""
    features = schema.example_features(example)
    return {f.name: features[f.name][0] if f.scalar else features[f.name] for f in schema.FIELDS}


class _SchemaExampleWriter(tfds.core.writer.ExampleWriter):
    """Writes each record as `schema.encode_example` encodes it (deterministic feature order)."""

    def write(self, path: Any, examples: Iterable[tuple[Any, bytes]]) -> Any:
        canonical = (
            (key, schema.encode_example(schema.decode_example_py(data))) for key, data in examples
        )
        return super().write(path, canonical)


def _count(outcome: Outcome) -> None:
    """Beam counters mirroring `Report.add`."""
    from apache_beam.metrics import Metrics

    if outcome.example is not None:
        Metrics.counter(METRICS_NAMESPACE, "examples").inc()
        Metrics.counter(METRICS_NAMESPACE, "entities").inc(len(outcome.example.entities))
        Metrics.counter(METRICS_NAMESPACE, "entities_without_mask").inc(boxes_only(outcome.example))
    for skip in outcome.skips:
        prefix = _ENTITY_SKIP if skip.entity else _IMAGE_SKIP
        Metrics.counter(METRICS_NAMESPACE, prefix + skip.reason.value).inc()


def _beam_unit(unit: Any, source: Source, options: BuildOptions) -> Iterator[tuple[str, dict]]:
    for outcome in process_unit(source, unit, options):
        _count(outcome)
        if outcome.example is not None:
            yield outcome.example.key, tfds_example(outcome.example)


def report_from_metrics(pipeline_result: Any) -> Report:
    """The build report from the Beam counters of a finished pipeline."""
    from apache_beam.metrics.metric import MetricsFilter

    report = Report()
    query = pipeline_result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    for counter in query["counters"]:
        name = counter.key.metric.name
        value = counter.committed if counter.committed is not None else counter.attempted
        if name == "examples":
            report.examples = value
        elif name == "entities":
            report.entities = value
        elif name == "entities_without_mask":
            report.entities_without_mask = value
        elif name.startswith(_IMAGE_SKIP):
            report.skipped_images[name.removeprefix(_IMAGE_SKIP)] = value
        elif name.startswith(_ENTITY_SKIP):
            report.skipped_entities[name.removeprefix(_ENTITY_SKIP)] = value
    return report


class Sdd(tfds.core.GeneratorBasedBuilder):
    """Subject-Diffusion training records (schema version 1) from a COCO, tar or JSONL source.

    Reading needs no source: `tfds.builder("sdd", data_dir=...)` once this module is imported,
    or `tfds.builder_from_directory(...)` without it.
    """

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "Schema version 1."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds finds the file of a builder inside a package through `importlib_resources`,
        # which sdjax does not depend on; this module's own path is the same answer.
        return epath.Path(__file__)

    def __init__(
        self,
        *,
        source: Source | None = None,
        options: BuildOptions | None = None,
        split: str = "train",
        **kwargs: Any,
    ):
        self._source = source
        self._options = options or BuildOptions()
        self._split = split
        self._use_beam = False
        self.report = Report()
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Images with captions and entities (label, score, box, mask, clause ids).",
            features=tfds_features(),
        )

    def _log_download_bytes(self) -> None:
        # tfds' own line speaks of downloading a dataset of "Unknown size"; these are local files.
        print(f"building records from local files into {self.data_dir}")

    def _log_download_done(self) -> None:
        pass  # the build report follows

    def _example_writer(self) -> tfds.core.writer.ExampleWriter:
        return _SchemaExampleWriter(file_format=self.info.file_format)

    def _download_and_prepare(self, dl_manager: Any, download_config: Any) -> None:
        if self._source is None:
            raise ValueError("building the sdd records needs a source (COCO, tars or manifests)")
        self._use_beam = bool(download_config.beam_runner or download_config.beam_options)
        super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        del dl_manager  # sources are local files
        return {self._split: self._generate_examples()}

    def _generate_examples(self) -> Any:
        if not self._use_beam:
            return self._generate_in_process()
        import apache_beam as beam

        return "ListUnits" >> beam.Create(
            list(self._source.units())
        ) | "BuildRecords" >> beam.FlatMap(_beam_unit, source=self._source, options=self._options)

    def _generate_in_process(self) -> Iterator[tuple[str, dict]]:
        with tqdm(self._source.units(), desc="building records", unit=" units") as bar:
            for unit in bar:
                for outcome in process_unit(self._source, unit, self._options):
                    self.report.add(outcome)
                    if outcome.example is not None:
                        yield outcome.example.key, tfds_example(outcome.example)
                skipped = sum(self.report.skipped_images.values())
                bar.set_postfix(written=self.report.examples, skipped=skipped)

    def _process_pipeline_result(self, pipeline_result: Any) -> None:
        self.report = report_from_metrics(pipeline_result)


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """The finished dataset: its shard files (the reader's input) and the build report."""

    files: list[str]
    report: Report
    reused: bool


def build(
    source: Source,
    data_dir: str | Path,
    *,
    split: str = "train",
    options: BuildOptions | None = None,
    num_shards: int | None = None,
    beam_runner: Any = None,
    beam_options: Any = None,
    overwrite: bool = False,
) -> BuildResult:
    """Build (or reuse) the records of `source` under `data_dir`.

    `num_shards=None` lets tfds size the shards; a Beam runner or options switch to Beam. An
    in-process build first checks that every record key is unique (`check_unique_keys`).
    """
    builder = Sdd(source=source, options=options, split=split, data_dir=str(data_dir))
    reused = builder.is_prepared() and not overwrite
    if not reused and beam_runner is None and beam_options is None:
        check_unique_keys(source, options or BuildOptions())
    mode = tfds.download.GenerateMode
    config = tfds.download.DownloadConfig(
        num_shards=num_shards,
        beam_runner=beam_runner,
        beam_options=beam_options,
        download_mode=mode.REUSE_DATASET_IF_EXISTS if not overwrite else mode.FORCE_REDOWNLOAD,
    )
    builder.download_and_prepare(download_config=config)
    return BuildResult(shard_files(data_dir, split), builder.report, reused)
