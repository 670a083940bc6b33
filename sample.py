"""Generate images of subjects with an exported Subject-Diffusion model.

    python sample.py --prompt "a star on the grass"                     # no subjects
    python sample.py --prompt "a star and a heart on the grass" \\
        --subject data/references/star.png --box 0.1,0.2,0.5,0.9 \\
        --subject data/references/heart.png --box 0.55,0.3,0.95,0.9 \\
        --num_images 4 --seed 0 --out samples/
    python sample.py --checkpoint runs/tiny/export --prompt "a cat on the beach" \\
        --subject cat.png --mask cat_mask.png --label cat
    python sample.py --prompt "a cat on the beach" --subject photo.jpg --crop 0.1,0.2,0.6,0.9 \\
        --label cat --segmenter /models/sam-vit-huge     # cut out by Segment Anything

`--box`, `--crop`, `--mask` and `--label` describe the `--subject` given before them. Writes
`image_000.png`, ... and `grid.png` into `--out`, and `subject_0_cutout.png`, ... for each
subject a segmenter cut out. Bad input is reported in one line (exit 1);
bad flags exit 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from sdjax.compilation import add_xla_flags, enable_compilation_cache
from sdjax.sampling import SamplingInputError, Subject, SubjectDiffusionPipeline, image_grid
from sdjax.sampling.layout import check_box
from sdjax.sampling.segment import ModelFolderError, SamSegmenter, export_segmenter
from sdjax.sampling.subjects import (
    Segmenter,
    SegmenterNotice,
    cut_out,
    read_subject,
    subject_box,
)
from sdjax.schedulers import SAMPLERS
from sdjax.weights.core import WeightLoadError

DEFAULT_CHECKPOINT = "runs/toy_world/export"
SUBJECT_KEY = "subjects"
CUTOUT = "subject_{}_cutout.png"


def parse_floats(text: str, count: int, what: str) -> tuple[float, ...]:
    """`count` comma-separated numbers, or an argparse error naming `text`."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"{what} {text!r} must be {count} comma-separated numbers")
    return values


def parse_window(text: str) -> tuple[int, int]:
    """Two comma-separated non-negative integers."""
    values = parse_floats(text, 2, "window")
    if not all(v.is_integer() and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"window {text!r} must be two step indices >= 0")
    return int(values[0]), int(values[1])


def parse_bool(text: str, what: str) -> bool:
    """`true` or `false` (any case) as a bool."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{what} must be true or false, got {text!r}")
    return text.lower() == "true"


def box_argument(text: str) -> tuple[float, ...]:
    """A normalised box `x0,y0,x1,y1`, checked like the pipeline checks it."""
    try:
        return check_box(parse_floats(text, 4, "box"), "box")
    except SamplingInputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class SubjectAction(argparse.Action):
    """`--subject PATH` starts a subject; `--box`/`--crop`/`--mask`/`--label` fill in the last one."""

    def __call__(self, parser, namespace, value, option_string=None):
        subjects = getattr(namespace, SUBJECT_KEY) or []
        setattr(namespace, SUBJECT_KEY, subjects)
        if self.dest == "image":
            subjects.append({"image": value})
            return
        if not subjects:
            parser.error(f"{option_string} {value} comes before any --subject")
        if self.dest in subjects[-1]:
            parser.error(f"{option_string} given twice for --subject {subjects[-1]['image']}")
        subjects[-1][self.dest] = value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Generate images of subjects with Subject-Diffusion."
    )
    parser.add_argument(
        "--checkpoint", default=DEFAULT_CHECKPOINT, help="sdjax export folder (%(default)s)"
    )
    parser.add_argument("--prompt", required=True, help="what the image shows")
    parser.add_argument(
        "--negative_prompt", default="", help="steered away from (the i and u branches' prompt)"
    )
    parser.set_defaults(**{SUBJECT_KEY: None})
    group = parser.add_argument_group("subjects (repeat --subject; the options after it are its)")
    subject = dict(action=SubjectAction, default=argparse.SUPPRESS)
    group.add_argument("--subject", dest="image", help="subject image (PNG, JPEG, ...)", **subject)
    group.add_argument(
        "--box",
        dest="layout",
        type=box_argument,
        help="where the subject goes in the OUTPUT image: x0,y0,x1,y1 in [0, 1] "
        "(default: a lone subject keeps its own box, others are placed at random)",
        **subject,
    )
    group.add_argument(
        "--crop",
        dest="box",
        type=box_argument,
        help="the subject within its own image, x0,y0,x1,y1 in [0, 1] (default: the mask's box)",
        **subject,
    )
    group.add_argument(
        "--mask", dest="mask", help="segmentation mask PNG of the subject", **subject
    )
    group.add_argument(
        "--label", dest="label", help="its word in the prompt (default: file name)", **subject
    )
    parser.add_argument(
        "--segmenter",
        help="transformers SamModel folder that cuts out subjects given without --mask "
        "(default: the export's sampling.segmenter, if any)",
    )
    parser.add_argument("--num_images", type=int, default=4, help="(%(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(%(default)s)")
    parser.add_argument("--steps", type=int, help="default: the config's sampling.steps")
    parser.add_argument("--scheduler", choices=sorted(SAMPLERS), help="default: the config's")
    parser.add_argument("--guidance_text", type=float, help="s_T (default: the config's)")
    parser.add_argument("--guidance_image", type=float, help="s_I (default: the config's)")
    parser.add_argument("--adapter_scale", type=float, help="beta (default: the config's)")
    parser.add_argument(
        "--interpolation",
        type=lambda text: parse_floats(text, 2, "interpolation"),
        default=(0.0, 1.0),
        help="start,end fractions of the schedule that use the subjects (0,1)",
    )
    parser.add_argument(
        "--base_model",
        help="pretrained Stable Diffusion folder run outside the interpolation window "
        "(default: the export's model.pretrained when its sampling.outside_window=base_model)",
    )
    parser.add_argument(
        "--window",
        type=parse_window,
        help="start,end model-call indices (inclusive) that use the subjects, instead of "
        "--interpolation (the reference code's subject test)",
    )
    parser.add_argument(
        "--use_bbox",
        type=lambda text: parse_bool(text, "use_bbox"),
        help="true|false: the grounding tokens code the subjects' boxes (default: the export's)",
    )
    parser.add_argument("--height", type=int, help="default: the training resolution")
    parser.add_argument("--width", type=int, help="default: the training resolution")
    parser.add_argument("--batch_size", type=int, help="images per compiled call")
    parser.add_argument("--out", default="samples", help="output folder (%(default)s)")
    parser.add_argument(
        "--compilation_cache",
        default="auto",
        help="JAX's persistent compilation cache: a folder, auto or off (%(default)s)",
    )
    return parser.parse_args(argv)


def load_subjects(
    specs: Sequence[dict], segmenter: Segmenter | None = None, out: Path | None = None
) -> list[Subject]:
    """Subjects with their files read now, so a bad file fails before the model loads; a
    segmenter's cut-outs are saved into `out` as `subject_{i}_cutout.png`."""
    subjects = []
    for i, spec in enumerate(specs):
        named = Subject(**spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SegmenterNotice)  # the pipeline gives it, once
            pixels, mask = read_subject(named, segmenter)
        if segmenter is not None and out is not None and named.mask is None:
            out.mkdir(parents=True, exist_ok=True)
            cut = cut_out(pixels, mask, subject_box(named, mask))
            Image.fromarray(cut).save(out / CUTOUT.format(i))
        if not named.label:
            print(
                f"note: {named.image} is labelled {named.resolved_label()!r} in the prompt (its "
                "file name); give --label after --subject to name it",
                file=sys.stderr,
            )
        subjects.append(
            Subject(
                pixels,
                mask=mask,
                box=named.box,
                label=named.resolved_label(),
                layout=named.layout,
            )
        )
    return subjects


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    kind = "note" if issubclass(category, SegmenterNotice) else "warning"
    print(f"{kind}: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    add_xla_flags()  # read when JAX starts its backend, below
    enable_compilation_cache(args.compilation_cache)
    warnings.showwarning = show_warning
    try:
        folder = args.segmenter or export_segmenter(args.checkpoint)
        segmenter = SamSegmenter(folder) if folder else None
        out = Path(args.out)
        subjects = load_subjects(getattr(args, SUBJECT_KEY) or [], segmenter, out)
        pipe = SubjectDiffusionPipeline.from_pretrained(
            args.checkpoint,
            batch_size=args.batch_size,
            segmenter=None,  # cut out above
            base_model=args.base_model,
        )
        images = pipe(
            args.prompt,
            subjects,
            num_images=args.num_images,
            steps=args.steps,
            scheduler=args.scheduler,
            guidance_text=args.guidance_text,
            guidance_image=args.guidance_image,
            seed=args.seed,
            height=args.height,
            width=args.width,
            negative_prompt=args.negative_prompt,
            adapter_scale=args.adapter_scale,
            interpolation=args.interpolation,
            window=args.window,
            use_bbox=args.use_bbox,
            progress=True,
        )
    except (SamplingInputError, WeightLoadError, ModelFolderError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(out / f"image_{i:03d}.png")
    image_grid(images).save(out / "grid.png")
    print(f"wrote {len(images)} images and grid.png to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
