"""The toy-subjects world's metrics through `sdjax.eval`: an export draws the world's held-out
scenes and `sdjax.toy_world` scores them (location, identity, class, scene per subject count)."""

from __future__ import annotations

from pathlib import Path

from sdjax.eval.report import write_json
from sdjax.sampling import SubjectDiffusionPipeline
from sdjax.toy_world.benchmark import METRICS, comparison_grid, sample_scenes
from sdjax.toy_world.world import read_eval_file

EVAL_FILE = "eval.json"
GRID_SCENES = 8


def eval_file(world: str | Path) -> Path:
    """The world's `eval.json`: `world` itself or the file inside the world folder."""
    path = Path(world)
    path = path / EVAL_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(
            f"no toy-world evaluation file at {path} (`python train.py` writes WORKDIR/world/"
            f"{EVAL_FILE})"
        )
    return path


def toy_table(summaries: dict[int, dict[str, float]]) -> str:
    """Markdown: one row per subject count, one column per metric."""
    lines = ["| subjects | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for count, summary in sorted(summaries.items()):
        lines.append(f"| {count} | " + " | ".join(f"{summary[m]:.0%}" for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def evaluate_toy(
    export: str | Path,
    world: str | Path,
    out: str | Path,
    *,
    num_eval: int | None = None,
    use_references: bool = True,
    **sampling,
) -> dict:
    """Scores the export on the held-out scenes; writes results.json, table.md and a grid per
    subject count into `out`; returns results.json's content."""
    eval_set = read_eval_file(eval_file(world))
    pipeline = SubjectDiffusionPipeline.from_pretrained(export)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries, confusions, stripes = {}, {}, {}
    for count, scenes in sorted(eval_set.scenes.items()):
        sampled = sample_scenes(
            pipeline,
            scenes[:num_eval],
            eval_set.image_size,
            eval_set.pattern_period,
            use_references=use_references,
            **sampling,
        )
        summaries[count] = sampled.summary()
        confusions[count] = sampled.pattern_confusion()
        stripes[count] = sampled.stripes_line_share()
        grid = comparison_grid(sampled, GRID_SCENES, eval_set.image_size, eval_set.pattern_period)
        grid.save(out / f"grid_{count}.png")
    content = {
        "export": str(export),
        "world": str(world),
        "use_references": use_references,
        "scenes_per_count": {c: len(s[:num_eval]) for c, s in eval_set.scenes.items()},
        "sampling": sampling,
        "results": summaries,
        "pattern_confusion": confusions,  # {count: {requested: {read: subjects}}}
        # {count: quartiles of how striped the striped requests are drawn (stripes from 0.75)}
        "stripes_line_share": stripes,
    }
    write_json(out / "results.json", content)
    (out / "table.md").write_text(toy_table(summaries))
    return content
