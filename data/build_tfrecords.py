r"""Build sdjax training records (TFRecord schema version 1) from COCO, Subject-Diffusion tars or JSONL.

    python data/build_tfrecords.py coco --instances instances_val2017.json \
        --captions captions_val2017.json --image_dir val2017 --data_dir /data/records
    python data/build_tfrecords.py sdd_tar --tars 'laion/*.tar' --data_dir /data/records \
        --beam_runner DirectRunner --beam_options='--direct_num_workers=8 --direct_running_mode=multi_processing'
    python data/build_tfrecords.py jsonl --manifests my_set.jsonl --data_dir /data/records

See docs/data.md for the formats and the checks applied.
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `data` and `sdjax` importable, here and
    # in the worker processes a local Beam runner starts
    _ROOT = str(Path(__file__).resolve().parents[1])
    sys.path.insert(0, _ROOT)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))

from data.coco import CocoSource  # noqa: E402
from data.manifest import ManifestSource  # noqa: E402
from data.records import KEY_MODES, BuildOptions, Source  # noqa: E402
from data.sdd_builder import build  # noqa: E402
from data.sdd_tars import SddTarSource  # noqa: E402
from sdjax import cli  # noqa: E402


def _flag(text: str) -> bool:
    values = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return values[text.lower()]


def _paths(patterns: list[str]) -> tuple[str, ...]:
    paths = sorted({p for pattern in patterns for p in glob.glob(pattern)})
    if not paths:
        raise FileNotFoundError(f"no file matches {' '.join(patterns)}")
    return tuple(paths)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    formats = parser.add_subparsers(dest="input_format", required=True, metavar="FORMAT")
    coco = formats.add_parser("coco", help="COCO instances + captions json files")
    coco.add_argument("--instances", required=True, help="instances_*.json")
    coco.add_argument("--captions", required=True, help="captions_*.json")
    coco.add_argument("--image_dir", required=True, help="folder of the images' file_name")
    tars = formats.add_parser("sdd_tar", help="Subject-Diffusion webdataset tars")
    tars.add_argument("--tars", nargs="+", required=True, help="tar files or glob patterns")
    jsonl = formats.add_parser("jsonl", help="JSONL manifests")
    jsonl.add_argument("--manifests", nargs="+", required=True, help="files or glob patterns")
    for sub in (coco, tars, jsonl):
        out = sub.add_argument_group("output")
        out.add_argument("--data_dir", required=True, help="tfds data_dir of the records")
        out.add_argument("--split", default="train")
        out.add_argument("--num_shards", type=int, default=None, help="default: tfds sizes them")
        out.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")
        checks = sub.add_argument_group("checks")
        checks.add_argument(
            "--require_label_in_caption",
            type=_flag,
            default=True,
            help="true (default): drop entities whose label the caption does not name",
        )
        checks.add_argument(
            "--min_entities",
            type=int,
            default=BuildOptions.min_entities,
            help="skip images with fewer kept entities (default %(default)s)",
        )
        checks.add_argument(
            "--box_tolerance",
            type=float,
            default=BuildOptions.box_tolerance,
            help="pixels a box may overshoot the image and be clipped (default %(default)s)",
        )
        checks.add_argument("--strict", action="store_true", help="stop at the first bad record")
        checks.add_argument("--tokenizer", default=None, help="model folder with a tokenizer/")
        checks.add_argument(
            "--keys",
            choices=KEY_MODES,
            default=BuildOptions.keys,
            help="record keys: the source's own (default; a repeated one stops the build before "
            "it starts) or location (file and line, so a repeated image is kept twice)",
        )
        beam = sub.add_argument_group("Apache Beam")
        beam.add_argument("--beam_runner", default=None, help="e.g. DirectRunner")
        beam.add_argument("--beam_options", default="", help="pipeline flags, one string")
    return parser.parse_args(argv)


def make_source(args: argparse.Namespace) -> Source:
    if args.input_format == "coco":
        return CocoSource(args.instances, args.captions, args.image_dir)
    if args.input_format == "sdd_tar":
        return SddTarSource(_paths(args.tars))
    return ManifestSource(_paths(args.manifests))


@cli.one_line_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    options = BuildOptions(
        require_label_in_caption=args.require_label_in_caption,
        min_entities=args.min_entities,
        box_tolerance=args.box_tolerance,
        strict=args.strict,
        tokenizer_dir=args.tokenizer,
        keys=args.keys,
    )
    beam_options = None
    if args.beam_options:
        from apache_beam.options.pipeline_options import PipelineOptions

        beam_options = PipelineOptions(shlex.split(args.beam_options))
    result = build(
        make_source(args),
        args.data_dir,
        split=args.split,
        options=options,
        num_shards=args.num_shards,
        beam_runner=args.beam_runner,
        beam_options=beam_options,
        overwrite=args.overwrite,
    )
    if result.reused:
        print(f"records already built under {args.data_dir} (use --overwrite to rebuild)")
    else:
        print(result.report.summary())
    print(f"{len(result.files)} shard(s):", *result.files, sep="\n  ")


if __name__ == "__main__":
    main()
