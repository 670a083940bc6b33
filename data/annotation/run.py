"""The annotation run in process: resumable, sharded, batched, with a progress bar and a report.

Output under `out`: `manifest-{i}-of-{n}.jsonl` (kept images), `dropped-{i}-of-{n}.jsonl` (the
others, with their reason) and `masks/`. An image named in any manifest or dropped log under
`out` is done and skipped by the next run, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

from data.annotation.inputs import ImageRef, open_image
from data.annotation.items import Dropped, Item, Report
from data.annotation.models import Captioner, Detector, MaskMaker
from data.annotation.nouns import NounTagger
from data.annotation.options import AnnotateOptions
from data.annotation.step import ModelStep
from data.annotation.writer import ManifestWriter

MANIFEST = "manifest-{}.jsonl"
DROPPED = "dropped-{}.jsonl"
DONE_PATTERNS = ("manifest-*.jsonl", "dropped-*.jsonl")


def make_steps(options: AnnotateOptions) -> list[ModelStep]:
    """Caption, nouns, boxes, masks: each a batched step whose model loads on first use."""
    return [Captioner(options), NounTagger(options), Detector(options), MaskMaker(options)]


def parse_shard(text: str) -> tuple[int, int]:
    """`i/n` -> (i, n) with 0 <= i < n."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise ValueError(f"shard {text!r} must be i/n with 0 <= i < n, e.g. 0/4")
    return index, count


def shard_name(index: int, count: int) -> str:
    return f"{index:05d}-of-{count:05d}"


def _keys(path: Path) -> Iterator[str]:
    """Keys of a JSONL log; a last line cut short by an interruption is removed from the file."""
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        path.write_text(text, encoding="utf-8")
    for line in text.splitlines():
        yield json.loads(line)["key"]


def done_keys(out: Path) -> set[str]:
    """Keys of every image an earlier run kept or dropped under `out`."""
    return {key for pattern in DONE_PATTERNS for path in out.glob(pattern) for key in _keys(path)}


def run_steps(steps: Sequence[ModelStep], items: Sequence[Item | Dropped]) -> list[Item | Dropped]:
    """Every item through every step; dropped ones leave at the step that dropped them."""
    results = list(items)
    for step in steps:
        live = [r for r in results if isinstance(r, Item)]
        done = iter(step(live) if live else [])
        results = [next(done) if isinstance(r, Item) else r for r in results]
    return results


def batches(refs: Sequence[ImageRef], size: int) -> Iterator[Sequence[ImageRef]]:
    for start in range(0, len(refs), size):
        yield refs[start : start + size]


def annotate(
    refs: Sequence[ImageRef],
    options: AnnotateOptions,
    out: str | Path,
    shard: tuple[int, int] = (0, 1),
    steps: Sequence[ModelStep] | None = None,
) -> Report:
    """Annotates this shard's images not done yet into `out`; returns the report of this run."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mine = [ref for i, ref in enumerate(refs) if i % shard[1] == shard[0]]
    done = done_keys(out)
    todo = [ref for ref in mine if ref.key not in done]
    report = Report(resumed=len(mine) - len(todo))
    steps = make_steps(options) if steps is None else steps
    write = ManifestWriter(str(out))
    name = shard_name(*shard)
    with (
        open(out / MANIFEST.format(name), "a", encoding="utf-8") as manifest,
        open(out / DROPPED.format(name), "a", encoding="utf-8") as dropped,
        tqdm(total=len(todo), desc="annotating", unit=" images") as bar,
    ):
        for batch in batches(todo, options.batch_size):
            loaded = [open_image(ref, options.min_side) for ref in batch]
            for result in run_steps(steps, loaded):
                if isinstance(result, Item):
                    manifest.write(json.dumps(write(result)) + "\n")
                    report.add_kept(len(result.labels), result.entity_drops)
                else:
                    dropped.write(json.dumps(result.line()) + "\n")
                    report.add_dropped(result)
            manifest.flush()
            dropped.flush()
            bar.update(len(batch))
            bar.set_postfix(kept=report.kept, dropped=sum(report.dropped.values()))
    return report
