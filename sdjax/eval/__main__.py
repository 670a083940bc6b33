"""`python -m sdjax.eval`: evaluate an sdjax export on DreamBench or on the toy-subjects world.

    python -m sdjax.eval dreambench --data /data/dreambooth/dataset --export runs/sd2/export \\
        --dino /models/dino-vits16 --clip /models/clip-vit-base-patch32 \\
        --clip /models/clip-vit-large-patch14 --out eval/sd2 [--mode two] \\
        [--config configs/dreambench.py] [--config.generation.images_per_prompt=4 ...]
    python -m sdjax.eval toy --export runs/toy_world/export --world runs/toy_world/world \\
        --out eval/toy
    python -m sdjax.eval binding --export runs/toy_world/export [--data 'records/*'] \\
        [--batches 4] [--timesteps 950,600,200,50]

Run again with the same arguments to resume: images already on disk are not drawn again.
Bad input ends in one line, `error: ...`, with exit code 1 (2 for a flag).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from sdjax import cli

PACKAGE = Path(__file__).resolve().parent
DEFAULT_CONFIG = PACKAGE.parents[1] / "configs" / "dreambench.py"
DEFAULT_PAIRS = PACKAGE / "dreambench_pairs.txt"
CONFIG_PREFIX = "--config."
BINDING_TIMESTEPS = (950, 800, 600, 400, 200, 50)  # `binding`'s default, of the 1000 training steps


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The subcommand's arguments and the `--config.x=y` overrides."""
    parser = argparse.ArgumentParser(
        prog="python -m sdjax.eval",
        description="Evaluate an sdjax export: DreamBench (DINO, CLIP-I, CLIP-T), the toy world, "
        "or how its subject tokens' attention binds to their own subjects.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser(
        "dreambench",
        help="DreamBench single- or two-subject: generate, score, tabulate",
        description="Overrides of the config: --config.SECTION.FIELD=VALUE (see configs/dreambench.py).",
    )
    bench.add_argument("--data", required=True, help="DreamBench-layout folder (its dataset/)")
    bench.add_argument("--export", required=True, help="sdjax export folder")
    bench.add_argument("--dino", required=True, help="transformers ViTModel folder (DINO ViT-S/16)")
    bench.add_argument(
        "--clip",
        action="append",
        required=True,
        help="transformers CLIPModel folder; repeat for several (ViT-B/32 and ViT-L/14)",
    )
    bench.add_argument("--out", required=True, help="output folder (images, results, tables)")
    bench.add_argument("--mode", choices=("single", "two"), default="single", help="(%(default)s)")
    bench.add_argument(
        "--pairs", default=str(DEFAULT_PAIRS), help="two-subject pairs file (the shipped 30 pairs)"
    )
    bench.add_argument("--config", default=str(DEFAULT_CONFIG), help="(%(default)s)")
    bench.add_argument("--no_progress", action="store_true", help="no progress bars")

    toy = commands.add_parser("toy", help="the toy-subjects world's held-out scenes")
    toy.add_argument("--export", required=True, help="sdjax export folder")
    toy.add_argument("--world", required=True, help="the world folder or its eval.json")
    toy.add_argument("--out", required=True, help="output folder")
    toy.add_argument("--num_eval", type=int, help="scenes per subject count (default: all)")
    toy.add_argument("--steps", type=int, help="denoising steps (default: the export's)")
    toy.add_argument("--guidance_text", type=float, help="s_T (default: the export's)")
    toy.add_argument("--guidance_image", type=float, help="s_I (default: the export's)")
    toy.add_argument(
        "--no_references", action="store_true", help="the control: reference images dropped"
    )
    binding = commands.add_parser(
        "binding",
        help="each subject token's cross-attention in its own subject, on training records",
        description="Records with 2+ subjects, noised to each timestep: the share of each "
        "subject's `sks` and entity-word attention (inside the subjects' masks) in its own mask.",
    )
    binding.add_argument("--export", required=True, help="sdjax export folder")
    binding.add_argument(
        "--data", help="TFRecord glob(s), comma-separated (default: the export's training data)"
    )
    binding.add_argument("--batches", type=int, default=4, help="reader batches (%(default)s)")
    binding.add_argument(
        "--timesteps",
        default=",".join(map(str, BINDING_TIMESTEPS)),
        help="comma-separated training timesteps (%(default)s)",
    )
    binding.add_argument("--out", help="also write results.json and table.md here")
    args, rest = parser.parse_known_args(argv)
    unknown = [
        a for a in rest if not (args.command == "dreambench" and a.startswith(CONFIG_PREFIX))
    ]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args, rest


def load_config(path: str, overrides: Sequence[str]):
    """The config file with `--config.x=y` overrides applied (a bad one: one line, exit 2)."""
    from absl import flags
    from ml_collections import config_flags

    argv = [sys.argv[0], f"--config={path}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", path, flag_values=values, sys_argv=argv)
    cli.parse_absl_flags(argv, values)
    return values.config


@cli.one_line_errors
def run_dreambench(args: argparse.Namespace, overrides: Sequence[str]) -> dict:
    from sdjax.eval.dreambench_run import RunPaths, evaluate_dreambench
    from sdjax.trainer import maybe_initialize_distributed

    config = load_config(args.config, overrides)
    maybe_initialize_distributed(config)
    paths = RunPaths(
        dreambench=Path(args.data),
        export=Path(args.export),
        dino=Path(args.dino),
        clips=[Path(p) for p in args.clip],
        out=Path(args.out),
        pairs=Path(args.pairs),
    )
    content = evaluate_dreambench(paths, config, args.mode, progress=not args.no_progress)
    if content:
        print((paths.out / "table.md").read_text())
        unreadable = content["unreadable_images"]["count"]
        print(
            f"{content['images_scored']} of {content['images_expected']} images scored "
            f"({content['images_drawn_now']} drawn now); {unreadable} unreadable skipped; "
            f"outputs in {paths.out}"
        )
    return content


@cli.one_line_errors
def run_toy(args: argparse.Namespace) -> dict:
    from sdjax.eval.toy import evaluate_toy

    chosen = {
        "steps": args.steps,
        "guidance_text": args.guidance_text,
        "guidance_image": args.guidance_image,
    }
    content = evaluate_toy(
        args.export,
        args.world,
        args.out,
        num_eval=args.num_eval,
        use_references=not args.no_references,
        **{k: v for k, v in chosen.items() if v is not None},
    )
    print((Path(args.out) / "table.md").read_text())
    return content


@cli.one_line_errors
def run_binding(args: argparse.Namespace) -> dict:
    from sdjax.eval.binding import binding_table, measure_binding, read_batches
    from sdjax.eval.report import write_json
    from sdjax.weights.subject_diffusion import load_subject_diffusion

    try:
        timesteps = [int(t) for t in args.timesteps.split(",")]
    except ValueError:
        raise ValueError(
            f"--timesteps={args.timesteps!r}: expected integers, comma-separated"
        ) from None
    model, config = load_subject_diffusion(args.export)
    batches = read_batches(model, config.data, args.data, args.batches)
    rows = measure_binding(model, config, batches, timesteps, seed=config.seed)
    table = binding_table(rows)
    print(table)
    content = {"export": str(args.export), "rows": [dataclasses.asdict(r) for r in rows]}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", content)
        (out / "table.md").write_text(table)
    return content


def main(argv: Sequence[str] | None = None) -> dict:
    args, overrides = parse_args(argv)
    from sdjax.compilation import add_xla_flags

    add_xla_flags()  # read when JAX starts its backend
    if args.command == "dreambench":
        return run_dreambench(args, overrides)
    if args.command == "binding":
        return run_binding(args)
    return run_toy(args)


if __name__ == "__main__":
    main()
