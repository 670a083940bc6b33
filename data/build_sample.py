"""Build the TFRecords of the bundled sample set (`data/sample/`, 7 photos in COCO format).

python data/build_sample.py /tmp/sdjax-sample
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `data` and `sdjax` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.coco import CocoSource  # noqa: E402
from data.sdd_builder import build  # noqa: E402

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SAMPLE_SHARDS = 2


def sample_source() -> CocoSource:
    """The sample set as a COCO source."""
    annotations = SAMPLE_DIR / "annotations"
    return CocoSource(
        instances=str(annotations / "instances_sample.json"),
        captions=str(annotations / "captions_sample.json"),
        image_dir=str(SAMPLE_DIR / "images"),
    )


def build_sample_records(out_dir: str | Path, beam_runner: str | None = None) -> list[str]:
    """Build (or reuse) the sample records under `out_dir`; returns the shard paths."""
    result = build(
        sample_source(), out_dir, split="train", num_shards=SAMPLE_SHARDS, beam_runner=beam_runner
    )
    return result.files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="tfds data_dir to write the records under")
    print(*build_sample_records(parser.parse_args().out_dir), sep="\n")


if __name__ == "__main__":
    main()
