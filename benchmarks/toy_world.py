"""Does Subject-Diffusion learn the task? The toy-subjects world with the method's ablations.

Each setting trains with `python train.py --config=configs/toy_world.py` (the world and its VAE
are shared stages in WORKDIR), then its export draws the held-out scenes with 1, 2 and 3 subjects
(held-out looks, fresh layouts, references drawn on white) and the validated evaluator scores:
location (the subject found in its box, IoU >= 0.5), identity (colour and pattern of the
reference), class (the caption's shape) and scene (the prompt's background). The control draws
the full model's scenes with the reference images dropped: its identity must fall to chance. The
ceiling scores the held-out scenes themselves after the shared VAE's encode and decode: no model
that samples in that latent space can score above it.

    python benchmarks/toy_world.py                          # every setting, the config's steps
    python benchmarks/toy_world.py --settings full --steps 3000 --num_eval 50 --docs

Prints one markdown table; --docs also writes it (with the command, date and wall time) into
docs/benchmarks.md and a grid of references and samples per setting into docs/images/.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdjax.compilation import add_xla_flags, enable_compilation_cache  # noqa: E402

# Config overrides of each setting, as train.py flags.
SETTINGS: dict[str, tuple[str, ...]] = {
    "full": (),
    "no_location_mask": ("--config.model.use_location_mask=false",),
    "no_adapter": ("--config.model.unet.use_adapter=false",),
    "no_cls_fusion": ("--config.model.cls_fusion=false",),
    "no_attention_loss": ("--config.train.lambda_attn=0.0",),
    "no_box_coordinates": ("--config.model.grounding.box_embedding=false",),
    "no_box_mask": ("--config.model.box_masked_adapter=false",),
}
CONTROL = "full, references dropped at sampling"
CEILING = "ceiling: the true scenes through the VAE"
SUBJECT_COUNTS = (1, 2, 3)
DOCS = REPO / "docs" / "benchmarks.md"
IMAGES = REPO / "docs" / "images"
BEGIN, END = "<!-- toy_world:begin -->", "<!-- toy_world:end -->"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/toy_benchmark", help="shared stages and runs")
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help=f"comma-separated, of {list(SETTINGS)}"
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps of every setting")
    parser.add_argument("--num_eval", type=int, default=None, help="scenes per subject count")
    parser.add_argument("--sampling_steps", type=int, default=None, help="denoising steps")
    parser.add_argument("--guidance_text", type=float, default=None, help="s_T (default: config's)")
    parser.add_argument(
        "--guidance_image", type=float, default=None, help="s_I (default: config's)"
    )
    parser.add_argument(
        "--no_control", action="store_true", help="skip the dropped-reference control"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="a config override for every setting and the shared stages, as train.py takes it "
        "(repeatable), e.g. --override=--config.vae_fit.num_steps=1500",
    )
    parser.add_argument("--docs", action="store_true", help="write the table and grids into docs/")
    args = parser.parse_args()
    unknown = sorted(set(args.settings.split(",")) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; known: {list(SETTINGS)}")
    return args


def train_setting(name: str, args: argparse.Namespace) -> tuple[Path, float]:
    """Trains (or resumes, or finds finished) one setting through train.py; (export, seconds)."""
    workdir = Path(args.workdir)
    command = [
        sys.executable,
        str(REPO / "train.py"),
        f"--workdir={workdir / name}",
        f"--config.stages_dir={workdir}",
        *SETTINGS[name],
        *args.override,
    ]
    if args.steps:
        command.append(f"--config.train.num_steps={args.steps}")
    print("$", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    return workdir / name / "export", time.perf_counter() - start


def evaluate_setting(export: Path, args: argparse.Namespace, use_references: bool = True):
    """({subject count: SampledSet} of the held-out scenes drawn with the export, the scenes)."""
    from sdjax.sampling import SubjectDiffusionPipeline
    from sdjax.toy_world.benchmark import sample_scenes
    from sdjax.toy_world.world import read_eval_file

    eval_set = read_eval_file(Path(args.workdir) / "world" / "eval.json")
    pipeline = SubjectDiffusionPipeline.from_pretrained(export)
    chosen = {
        "steps": args.sampling_steps,
        "guidance_text": args.guidance_text,
        "guidance_image": args.guidance_image,
    }
    sampling = {k: v for k, v in chosen.items() if v is not None}
    sampled = {}
    for count in SUBJECT_COUNTS:
        scenes = eval_set.scenes[count][: args.num_eval]
        sampled[count] = sample_scenes(
            pipeline,
            scenes,
            eval_set.image_size,
            eval_set.pattern_period,
            use_references=use_references,
            **sampling,
        )
    return sampled, eval_set


def evaluate_ceiling(args: argparse.Namespace):
    """{subject count: SampledSet} of the held-out scenes themselves, encoded and decoded by the
    shared VAE: what a diffusion model that drew every latent right would score."""
    from sdjax.toy_world.benchmark import reconstructed_scenes, vae_round_trip
    from sdjax.toy_world.world import read_eval_file
    from sdjax.weights.vae import load_vae

    eval_set = read_eval_file(Path(args.workdir) / "world" / "eval.json")
    reconstruct = vae_round_trip(load_vae(Path(args.workdir) / "vae" / "export"))
    return {
        count: reconstructed_scenes(
            reconstruct,
            eval_set.scenes[count][: args.num_eval],
            eval_set.image_size,
            eval_set.pattern_period,
        )
        for count in SUBJECT_COUNTS
    }


def table(rows: list[tuple[str, float | None, dict]]) -> str:
    """Markdown: one row per setting, location / identity / class / scene per subject count, and
    how often a subject shows another requested subject's colour (looks bound to the wrong box)."""
    from sdjax.toy_world.benchmark import METRICS

    several = [n for n in SUBJECT_COUNTS if n > 1]
    header = (
        "| setting | train min |"
        + "".join(f" {n} subj. loc / id / class / scene |" for n in SUBJECT_COUNTS)
        + f" other's colour ({' / '.join(map(str, several))} subj.) |"
    )
    lines = [header, "|---|---|" + "---|" * (len(SUBJECT_COUNTS) + 1)]
    for name, seconds, summaries in rows:
        minutes = f"{seconds / 60:.1f}" if seconds is not None else "–"
        cells = "".join(
            " " + " / ".join(f"{summaries[n][m]:.0%}" for m in METRICS) + " |"
            for n in SUBJECT_COUNTS
        )
        swapped = " / ".join(f"{summaries[n]['other_colour']:.0%}" for n in several)
        lines.append(f"| {name} | {minutes} |{cells} {swapped} |")
    return "\n".join(lines)


def write_docs(markdown: str, command: str, wall_seconds: float) -> None:
    """Replaces the toy-world section of docs/benchmarks.md (between its markers)."""
    date = datetime.date.today().isoformat()
    section = (
        f"{BEGIN}\n`{command}` ({date}, wall time {wall_seconds / 60:.0f} min, 2 CPU cores)\n\n"
        f"{markdown}\n{END}"
    )
    head, rest = DOCS.read_text().split(BEGIN, 1)
    DOCS.write_text(head + section + rest.split(END, 1)[1])


def main() -> None:
    args = parse_args()
    add_xla_flags()
    enable_compilation_cache()
    from sdjax.eval.toy import GRID_SCENES
    from sdjax.toy_world.benchmark import comparison_grid

    started = time.perf_counter()
    rows = []
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name in args.settings.split(","):
        export, seconds = train_setting(name, args)
        if not rows:  # the shared stages exist once the first setting has trained
            ceiling = evaluate_ceiling(args)
            rows.append((CEILING, None, {n: s.summary() for n, s in ceiling.items()}))
        sampled, eval_set = evaluate_setting(export, args)
        rows.append((name, seconds, {n: s.summary() for n, s in sampled.items()}))
        if args.docs:
            for count, s in sampled.items():
                grid = comparison_grid(s, GRID_SCENES, eval_set.image_size, eval_set.pattern_period)
                grid.save(IMAGES / f"toy_world_{name}_{count}.png")
        if name == "full" and not args.no_control:
            control, _ = evaluate_setting(export, args, use_references=False)
            rows.append((CONTROL, None, {n: s.summary() for n, s in control.items()}))
        print(table(rows), flush=True)
    markdown = table(rows)
    print(markdown)
    if args.docs:
        write_docs(
            markdown,
            "python benchmarks/toy_world.py " + " ".join(sys.argv[1:]),
            time.perf_counter() - started,
        )


if __name__ == "__main__":
    main()
