"""A DreamBench run's outputs: `results.json`, `per_subject.csv`, `per_prompt.csv`, `table.md`
(this checkpoint beside the published numbers) and `grids/<subject>.png`."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from sdjax.eval.measure import DINO, clip_i, clip_t
from sdjax.eval.scores import PAIRING, Summary
from sdjax.eval.tasks import Task
from sdjax.sampling import image_grid

DIGITS = 3
MISSING = "–"


def write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=1) + "\n")


def results_content(
    summary: Summary, metrics: Sequence[str], run: dict, unreadable: Sequence[str]
) -> dict:
    """What `results.json` holds: the run's settings, the pairing, means at each level, and the
    images that could not be read."""
    return {
        **run,
        "pairing": PAIRING,
        "metrics": list(metrics),
        "overall": summary.overall,
        "per_subject": summary.per_subject,
        "per_prompt": [
            {"subject": key, "prompt": prompt, **values}
            for (key, prompt), values in summary.per_prompt.items()
        ],
        "unreadable_images": {"count": len(unreadable), "files": list(unreadable)},
    }


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _cell(value: float | None) -> str:
    return MISSING if value is None else f"{value:.{DIGITS}f}"


def markdown_table(
    summary: Summary, clip_names: Sequence[str], published: Sequence[Sequence], label: str
) -> str:
    """Rows: this checkpoint once per CLIP model, then the published methods; DINO / CLIP-I /
    CLIP-T columns."""
    lines = ["| method | CLIP | DINO | CLIP-I | CLIP-T |", "|---|---|---|---|---|"]
    for name in clip_names:
        values = (
            summary.overall[DINO],
            summary.overall[clip_i(name)],
            summary.overall[clip_t(name)],
        )
        lines.append(f"| {label} | {name} | " + " | ".join(_cell(v) for v in values) + " |")
    for method, *values in published:
        lines.append(f"| {method} | as published | " + " | ".join(_cell(v) for v in values) + " |")
    return "\n".join(lines) + f"\n\nPairing: {PAIRING}\n"


def write_grids(
    out: Path, tasks: Sequence[Task], references: dict[str, Path], columns: int
) -> list[Path]:
    """Per subject (or pair): its reference photos in the first row, then one row of generated
    images per prompt; images that are missing or unreadable are left out."""
    folder = out / "grids"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    by_key: dict[str, list[Task]] = {}
    for task in tasks:
        by_key.setdefault(task.key, []).append(task)
    for key, group_tasks in by_key.items():
        generated = []
        for task in group_tasks:
            try:
                with Image.open(task.path) as image:
                    generated.append(image.convert("RGB"))
            except (OSError, ValueError):
                continue
        if not generated:
            continue
        size = generated[0].size
        references_row = [_fitted(references[s.name], size) for s in group_tasks[0].group]
        blanks = [Image.new("RGB", size, "white")] * (-len(references_row) % columns)
        path = folder / f"{key}.png"
        image_grid(references_row + blanks + generated, columns).save(path)
        written.append(path)
    return written


def _fitted(path: Path, size: tuple[int, int]) -> Image.Image:
    """A reference photo resized to a generated image's size (white when unreadable)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    except (OSError, ValueError):
        return Image.new("RGB", size, "white")
