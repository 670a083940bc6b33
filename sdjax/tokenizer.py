"""CLIP BPE tokenizer, offline, and the Subject-Diffusion template prompt.

The vocabulary is built from the bundled CLIP merges file with the standard CLIP construction:
the 256 byte-level symbols, the same symbols ending a word (`</w>`), one token per merge, then
`<|startoftext|>` and `<|endoftext|>`: 49,408 tokens. A model folder's own `tokenizer/` wins.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:  # transformers loads in the functions that need it (a fast --help)
    from transformers import CLIPTokenizer

BOS_ID = 49406
EOS_ID = 49407
PLACEHOLDER = "sks"
PLACEHOLDER_ID = 48136
MAX_LENGTH = 77
VOCAB_SIZE = 49408

MERGES_PATH = Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49152 - 256 - 2 merges of the file (after its version header line).
NUM_MERGES = 48894
END_OF_WORD = "</w>"
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
# Clause layout: ", the {label} is sks" -> [",", "the", *label, "is", "sks"].
CLAUSE_PREFIX_LENGTH = 2
CLAUSE_SUFFIX_LENGTH = 2
# Which label token the attention loss supervises: the label's last sub-token, as the reference
# code (`sks` index - 2), or its first.
ENTITY_TOKENS = ("last", "first")


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE, in CLIP's vocabulary order.

    Bytes that print as themselves (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) come first, as themselves; the
    remaining 68 bytes follow in byte order, spelled by the code points from 256 up.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    remaining = len(set(range(256)) - set(printable))
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(remaining)]


def bundled_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary (token -> id) and merge list of the bundled CLIP BPE."""
    lines = gzip.decompress(MERGES_PATH.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    alphabet = byte_alphabet()
    tokens = [
        *alphabet,
        *(symbol + END_OF_WORD for symbol in alphabet),
        *("".join(pair) for pair in merges),
        START_TOKEN,
        END_TOKEN,
    ]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{MERGES_PATH} gives {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab, merges


@functools.cache
def bundled_tokenizer() -> CLIPTokenizer:
    """The CLIP tokenizer of SD 1.x (pad = `<|endoftext|>`), built from the bundled merges."""
    from transformers import CLIPTokenizer

    vocab, merges = bundled_vocab_and_merges()
    return _quiet(CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH))


def _quiet(tokenizer: CLIPTokenizer) -> CLIPTokenizer:
    """`tokenizer` without transformers' warning that ids past 77 would cause indexing errors:
    sdjax tokenizes captions whole and truncates the assembled prompt itself."""
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    return tokenizer


def load_tokenizer(
    model_dir: str | Path | None = None, *, bundled_if_missing: bool = False
) -> CLIPTokenizer:
    """The tokenizer in `model_dir/tokenizer/`; the bundled CLIP BPE when `model_dir` is None, or
    when that folder is missing and `bundled_if_missing` (otherwise a missing folder is an error:
    a model's own tokenizer may differ from the bundled one, e.g. in its padding token)."""
    if model_dir is None:
        return bundled_tokenizer()
    folder = Path(model_dir) / "tokenizer"
    if not folder.is_dir():
        if bundled_if_missing:
            return bundled_tokenizer()
        raise FileNotFoundError(
            f"no tokenizer folder at {folder}; pass bundled_if_missing=True to use the bundled "
            "CLIP BPE instead"
        )
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    _check_token_facts(tokenizer, folder)
    return _quiet(tokenizer)


def _check_token_facts(tokenizer: CLIPTokenizer, source: Path) -> None:
    """Refuse a tokenizer whose special ids differ from the CLIP ids sdjax relies on."""
    found = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        PLACEHOLDER: tokenizer.convert_tokens_to_ids(PLACEHOLDER + END_OF_WORD),
    }
    expected = {"bos": BOS_ID, "eos": EOS_ID, PLACEHOLDER: PLACEHOLDER_ID}
    if found != expected:
        raise ValueError(f"tokenizer at {source} has ids {found}; CLIP BPE needs {expected}")


def caption_ids(tokenizer: CLIPTokenizer, caption: str) -> list[int]:
    """CLIP ids of a caption, without BOS/EOS and untruncated."""
    return tokenizer(caption, add_special_tokens=False, truncation=False)["input_ids"]


def clause_text(label: str) -> str:
    """The prompt clause that binds one subject to the placeholder."""
    return f", the {label} is {PLACEHOLDER}"


def clause_ids(tokenizer: CLIPTokenizer, label: str) -> list[int]:
    """CLIP ids of `clause_text(label)`; the label's tokens are `[2:-2]`, `sks` is last."""
    ids = caption_ids(tokenizer, clause_text(label))
    if len(ids) <= CLAUSE_PREFIX_LENGTH + CLAUSE_SUFFIX_LENGTH or ids[-1] != PLACEHOLDER_ID:
        raise ValueError(f"label {label!r} gives the malformed clause ids {ids}")
    return ids


def entity_position(clause_start, placeholder, which: str = "last"):
    """Index of a clause's supervised label token from the clause's first index and its `sks`
    index (ints or arrays): the label's last sub-token (`which="last"`) or its first."""
    if which == "last":
        return placeholder - CLAUSE_SUFFIX_LENGTH
    if which == "first":
        return clause_start + CLAUSE_PREFIX_LENGTH
    raise ValueError(f"entity token {which!r}; known: {list(ENTITY_TOKENS)}")


class TemplatePrompt(NamedTuple):
    """Template prompt ids and, per subject, where its `sks` and supervised label token sit (0: cut)."""

    ids: np.ndarray
    placeholder_positions: np.ndarray
    entity_positions: np.ndarray


def assemble_template(
    caption: Sequence[int],
    clauses: Sequence[Sequence[int]],
    pad_id: int,
    max_length: int = MAX_LENGTH,
    entity_token: str = "last",
) -> TemplatePrompt:
    """BOS + caption + clauses + EOS, truncated to `max_length` keeping EOS, then padded.

    A subject whose `sks` token was cut off gets position 0 (the BOS slot, never a real position)
    for both its placeholder and its label.
    """
    ids = [BOS_ID, *caption]
    placeholder_positions, entity_positions = [], []
    for clause in clauses:
        if clause[-1] != PLACEHOLDER_ID:
            raise ValueError(f"clause {list(clause)} does not end with {PLACEHOLDER_ID}")
        start = len(ids)
        ids.extend(clause)
        placeholder = len(ids) - 1
        kept = placeholder < max_length - 1
        placeholder_positions.append(placeholder if kept else 0)
        entity_positions.append(entity_position(start, placeholder, entity_token) if kept else 0)
    ids = ids[: max_length - 1] + [EOS_ID]
    ids += [pad_id] * (max_length - len(ids))
    return TemplatePrompt(
        np.asarray(ids, np.int32),
        np.asarray(placeholder_positions, np.int32),
        np.asarray(entity_positions, np.int32),
    )


def template_prompt_ids(
    caption: str,
    labels: Sequence[str],
    pad_id: int,
    max_length: int = MAX_LENGTH,
    tokenizer: CLIPTokenizer | None = None,
) -> TemplatePrompt:
    """Ids of `"{caption}, the {label_1} is sks, ..."` as the data contract assembles them."""
    tokenizer = tokenizer or bundled_tokenizer()
    return assemble_template(
        caption_ids(tokenizer, caption),
        [clause_ids(tokenizer, label) for label in labels],
        pad_id,
        max_length,
    )
