"""The annotation on Apache Beam: the same steps as DoFns, for sets larger than one machine.

Every worker loads each model once (`setup`) and runs batches (`BatchElements`). Output under
`out`: `manifest-beam{run}-{i}-of-{n}.jsonl`, `dropped-beam{run}-...` and `masks/` (`out` must be
a folder every worker can write, e.g. a shared file system). Images done by earlier runs under
`out` are left out; the report comes from Beam counters.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from data.annotation.inputs import ImageRef, open_image
from data.annotation.items import Dropped, Item, Report
from data.annotation.options import AnnotateOptions
from data.annotation.run import DROPPED, MANIFEST, done_keys, make_steps
from data.annotation.step import ModelStep
from data.annotation.writer import ManifestWriter

NAMESPACE = "sdjax_annotate"
DROPPED_TAG = "dropped"
_KEPT, _ENTITIES = "kept", "entities"
_IMAGE_DROP, _BOX_DROP = "dropped: ", "box dropped: "


def _route(result: Item | Dropped) -> Iterator[Any]:
    yield result if isinstance(result, Item) else beam.pvalue.TaggedOutput(DROPPED_TAG, result)


class OpenFn(beam.DoFn):
    """Reads one raw image."""

    def __init__(self, min_side: int):
        self.min_side = min_side

    def process(self, ref: ImageRef) -> Iterator[Any]:
        yield from _route(open_image(ref, self.min_side))


class StepFn(beam.DoFn):
    """Runs one annotation step on a batch of items; its model loads once per worker."""

    def __init__(self, step: ModelStep):
        self.step = step

    def setup(self) -> None:
        self.step.load()

    def process(self, batch: Sequence[Item]) -> Iterator[Any]:
        for result in self.step(batch):
            yield from _route(result)


class WriteFn(beam.DoFn):
    """Writes a kept item's masks and yields its manifest line."""

    def __init__(self, out: str):
        self.write = ManifestWriter(out)

    def process(self, item: Item) -> Iterator[str]:
        Metrics.counter(NAMESPACE, _KEPT).inc()
        Metrics.counter(NAMESPACE, _ENTITIES).inc(len(item.labels))
        for drop in item.entity_drops:
            Metrics.counter(NAMESPACE, _BOX_DROP + drop.value).inc()
        yield json.dumps(self.write(item))


def _dropped_line(dropped: Dropped) -> str:
    Metrics.counter(NAMESPACE, _IMAGE_DROP + dropped.reason.value).inc()
    for drop in dropped.entity_drops:
        Metrics.counter(NAMESPACE, _BOX_DROP + drop.value).inc()
    return json.dumps(dropped.line())


def report_from_metrics(result: Any) -> Report:
    """The run's report from its Beam counters."""
    report = Report()
    for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        name = counter.key.metric.name
        value = counter.committed if counter.committed is not None else counter.attempted
        if name == _KEPT:
            report.kept = value
        elif name == _ENTITIES:
            report.entities = value
        elif name.startswith(_IMAGE_DROP):
            report.dropped[name.removeprefix(_IMAGE_DROP)] = value
        elif name.startswith(_BOX_DROP):
            report.entities_dropped[name.removeprefix(_BOX_DROP)] = value
    return report


def _run_name(out: Path) -> str:
    """`beam{k}`: k counts the Beam runs already written under `out`."""
    runs = {p.name.split("-")[1] for p in out.glob(MANIFEST.format("beam*"))}
    return f"beam{len(runs):03d}"


def annotate_beam(
    refs: Sequence[ImageRef],
    options: AnnotateOptions,
    out: str | Path,
    runner: Any = "DirectRunner",
    pipeline_options: Any = None,
    steps: Sequence[ModelStep] | None = None,
) -> Report:
    """Annotates the images not done yet into `out` on a Beam runner; returns the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = done_keys(out)
    todo = [ref for ref in refs if ref.key not in done]
    steps = make_steps(options) if steps is None else steps
    name = _run_name(out)
    with beam.Pipeline(runner=runner, options=pipeline_options) as pipeline:
        opened = (
            pipeline
            | "ListImages" >> beam.Create(todo)
            | "Open" >> beam.ParDo(OpenFn(options.min_side)).with_outputs(DROPPED_TAG, main="items")
        )
        items, dropped = opened.items, [opened[DROPPED_TAG]]
        for step in steps:
            label = type(step).__name__
            results = (
                items
                | f"Batch{label}" >> beam.BatchElements(1, options.batch_size)
                | label >> beam.ParDo(StepFn(step)).with_outputs(DROPPED_TAG, main="items")
            )
            items = results.items
            dropped.append(results[DROPPED_TAG])
        _ = (
            items
            | "Write" >> beam.ParDo(WriteFn(str(out)))
            | "WriteManifest" >> _text(out / MANIFEST.format(name))
        )
        _ = (
            dropped
            | "AllDropped" >> beam.Flatten()
            | "DroppedLines" >> beam.Map(_dropped_line)
            | "WriteDropped" >> _text(out / DROPPED.format(name))
        )
    report = report_from_metrics(pipeline.result)
    report.resumed = len(refs) - len(todo)
    return report


def _text(path: Path) -> beam.io.WriteToText:
    prefix = str(path).removesuffix(".jsonl")
    return beam.io.WriteToText(
        prefix, file_name_suffix=".jsonl", shard_name_template="-SSSSS-of-NNNNN"
    )
