r"""Annotate raw photos into the JSONL manifest that `data/build_tfrecords.py jsonl` reads.

    python data/annotate.py photos/ --out annotated/ --captioner /models/blip-image-captioning-large \
        --detector /models/grounding-dino-tiny --segmenter /models/sam-vit-huge [--shard 0/4]
    python data/build_tfrecords.py jsonl --manifests 'annotated/manifest-*.jsonl' --data_dir records/

Inputs: folders of images, text files listing image paths, or webdataset tars. Each image gets
a caption (BLIP or BLIP-2), its nouns (spaCy), boxes for the nouns (Grounding DINO) and a mask
per box (SAM); repeated boxes add count words to the caption. A rerun skips images already done.
Needs the annotate extra: pip install -e '.[annotate]'. See docs/data.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `data` and `sdjax` importable (also in
    # the worker processes a local Beam runner starts)
    _ROOT = str(Path(__file__).resolve().parents[1])
    sys.path.insert(0, _ROOT)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))

from data.annotation.inputs import list_images  # noqa: E402
from data.annotation.options import AnnotateOptions  # noqa: E402
from data.annotation.run import annotate, parse_shard  # noqa: E402
from sdjax import cli  # noqa: E402

MODEL_FLAGS = ("captioner", "detector", "segmenter")


def _shard(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", help="image folders, image lists (.txt) or .tar files")
    parser.add_argument("--out", required=True, help="folder of the manifests and masks")
    parser.add_argument("--shard", type=_shard, default=(0, 1), help="i/n: every n-th image from i")
    models = parser.add_argument_group("models (local transformers folders)")
    settings = parser.add_argument_group("settings (defaults: the reference data_process.py)")
    for field in dataclasses.fields(AnnotateOptions):
        if field.name in MODEL_FLAGS:
            models.add_argument(f"--{field.name}", required=True)
        else:
            kind = str if field.default is None else type(field.default)
            settings.add_argument(
                f"--{field.name}", type=kind, default=field.default, help="(%(default)s)"
            )
    beam = parser.add_argument_group("Apache Beam")
    beam.add_argument(
        "--beam_runner", default=None, help="e.g. DirectRunner (then --shard is ignored)"
    )
    beam.add_argument("--beam_options", default="", help="pipeline flags, one string")
    return parser.parse_args(argv)


@cli.one_line_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    names = {field.name for field in dataclasses.fields(AnnotateOptions)}
    options = AnnotateOptions(**{k: v for k, v in vars(args).items() if k in names})
    refs = list_images(args.inputs)
    if args.beam_runner or args.beam_options:
        from apache_beam.options.pipeline_options import PipelineOptions

        from data.annotation.beam import annotate_beam

        flags = PipelineOptions(shlex.split(args.beam_options))
        report = annotate_beam(refs, options, args.out, args.beam_runner or "DirectRunner", flags)
    else:
        report = annotate(refs, options, args.out, args.shard)
    print(report.summary())


if __name__ == "__main__":
    main()
