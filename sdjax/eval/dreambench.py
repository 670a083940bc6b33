"""The DreamBench layout: subject folders of photos and `prompts_and_classes.txt`.

`prompts_and_classes.txt` (as google/dreambooth ships it) holds a `Classes` section of
`subject_name,class` lines, then `Object Prompts` and `Live Subject Prompts` sections of Python
lines `'a {0} {1} in the jungle'.format(unique_token, class_token),`. Any folder in that layout
works: `root/prompts_and_classes.txt` and `root/<subject>/*.jpg` (or `root/dataset/...`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

PROMPTS_FILE = "prompts_and_classes.txt"
NESTED_FOLDER = "dataset"
CLASS_HEADER = "subject_name,class"
SECTIONS = {"classes": "classes", "object prompts": "object", "live subject prompts": "live"}
TEMPLATE = re.compile(r"""^\s*(['"])(?P<template>.*)\1\s*\.format\(""")
PAIR_SEPARATOR = "+"


class DreamBenchError(ValueError):
    """A DreamBench folder or pairs file that does not hold what the layout needs."""


@dataclasses.dataclass(frozen=True)
class DreamSubject:
    """One subject: its folder name, class noun, prompt list, photos and their masks."""

    name: str
    noun: str
    live: bool
    images: tuple[Path, ...]
    masks: dict[Path, Path]


@dataclasses.dataclass(frozen=True)
class DreamBench:
    """Subjects by name and the two prompt template lists ({0}: unique token, {1}: class)."""

    root: Path
    subjects: dict[str, DreamSubject]
    object_prompts: tuple[str, ...]
    live_prompts: tuple[str, ...]


def parse_prompts_and_classes(text: str) -> tuple[dict[str, str], list[str], list[str]]:
    """(class noun by subject, object templates, live templates) of the file's text."""
    classes: dict[str, str] = {}
    prompts: dict[str, list[str]] = {"object": [], "live": []}
    section = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.lower() in SECTIONS:
            section = SECTIONS[stripped.lower()]
        elif section == "classes" and "," in stripped and stripped != CLASS_HEADER:
            name, noun = (part.strip() for part in stripped.split(",", 1))
            classes[name] = noun
        elif section in prompts and (match := TEMPLATE.match(stripped)):
            prompts[section].append(match["template"])
    return classes, prompts["object"], prompts["live"]


def prompt_text(template: str, noun: str) -> str:
    """A template with the class noun in place and no unique token: the prompt sdjax draws from
    (the subject clause is added by the pipeline) and the text CLIP-T compares with."""
    return " ".join(template.format("", noun).split())


def _mask_of(image: Path, mask_folder: str) -> Path | None:
    mask = image.parent / mask_folder / f"{image.stem}.png"
    return mask if mask.is_file() else None


def read_dreambench(
    path: str | Path,
    *,
    live_classes: Sequence[str],
    image_suffixes: Sequence[str],
    mask_folder: str,
) -> DreamBench:
    """The subjects and prompts of a DreamBench-layout folder; a subject folder without images or
    without a class line, or a file without prompts, is an error naming it."""
    root = Path(path)
    if not (root / PROMPTS_FILE).is_file() and (root / NESTED_FOLDER / PROMPTS_FILE).is_file():
        root = root / NESTED_FOLDER
    listing = root / PROMPTS_FILE
    if not listing.is_file():
        raise DreamBenchError(f"no {PROMPTS_FILE} in {path} (nor in {Path(path) / NESTED_FOLDER})")
    classes, object_prompts, live_prompts = parse_prompts_and_classes(listing.read_text())
    for what, found in (("Object Prompts", object_prompts), ("Live Subject Prompts", live_prompts)):
        if not found:
            raise DreamBenchError(f"{listing} has no '{what}' templates")
    subjects = {}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DreamBenchError(f"{root} holds no subject folders")
    suffixes = {s.lower() for s in image_suffixes}
    for folder in folders:
        images = tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes))
        if not images:
            raise DreamBenchError(
                f"subject folder {folder} has no images ({', '.join(sorted(suffixes))})"
            )
        if folder.name not in classes:
            raise DreamBenchError(
                f"subject {folder.name!r} has no class in {listing} (add a line "
                f"'{folder.name},<class noun>' under Classes)"
            )
        noun = classes[folder.name]
        masks = {image: m for image in images if (m := _mask_of(image, mask_folder))}
        subjects[folder.name] = DreamSubject(folder.name, noun, noun in live_classes, images, masks)
    return DreamBench(root, subjects, tuple(object_prompts), tuple(live_prompts))


def read_pairs(path: str | Path, subjects: Sequence[str]) -> list[tuple[str, str]]:
    """Subject pairs of a file of `a,b` lines (`#` comments); unknown names are an error."""
    pairs = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        names = tuple(part.strip() for part in text.split(","))
        unknown = [n for n in names if n not in subjects]
        if len(names) != 2 or names[0] == names[1] or unknown:
            reason = f"unknown subjects {unknown}" if unknown else "needs two different subjects"
            raise DreamBenchError(f"{path}:{number}: {line.strip()!r} {reason}")
        pairs.append(names)
    if not pairs:
        raise DreamBenchError(f"{path} lists no pairs")
    return pairs


def pair_templates(bench: DreamBench, group: Sequence[DreamSubject]) -> tuple[str, ...]:
    """The prompt list of a subject or pair: the live list when every subject is live."""
    return bench.live_prompts if all(s.live for s in group) else bench.object_prompts


def group_noun(group: Sequence[DreamSubject]) -> str:
    """What stands in the template's class slot: `backpack`, or `backpack and a dog` for a pair."""
    return " and a ".join(s.noun for s in group)


def group_key(group: Sequence[DreamSubject]) -> str:
    """The folder name of a subject's or pair's generated images."""
    return PAIR_SEPARATOR.join(s.name for s in group)
