"""Token ids of the prompts a sampling call needs, with a warning when one is truncated."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sdjax.sampling.errors import SamplingInputError
from sdjax.tokenizer import TemplatePrompt, assemble_template, caption_ids, clause_ids

if TYPE_CHECKING:
    from transformers import CLIPTokenizer


def prompt_ids(
    tokenizer: CLIPTokenizer,
    prompt: str,
    labels: Sequence[str],
    pad_id: int,
    max_length: int,
    what: str = "prompt",
    warn: bool = True,
) -> TemplatePrompt:
    """Ids of `"{prompt}, the {label_1} is sks, ..."` (just the prompt when `labels` is empty).

    Too long a prompt is cut to `max_length` tokens (keeping EOS) with a warning that names it;
    a subject whose placeholder was cut then gets position 0 (no fusion). `warn=False` for a
    prompt whose truncation was already reported.
    """
    if not isinstance(prompt, str):
        raise SamplingInputError(f"{what} must be a string, got {prompt!r}")
    clauses = []
    for label in labels:
        try:
            clauses.append(clause_ids(tokenizer, label))
        except ValueError as error:
            raise SamplingInputError(f"subject label {label!r} cannot be used: {error}") from None
    caption = caption_ids(tokenizer, prompt)
    template = assemble_template(caption, clauses, pad_id, max_length)
    length = 2 + len(caption) + sum(len(c) for c in clauses)  # with BOS and EOS
    if warn and length > max_length:
        cut = [labels[i] for i, p in enumerate(template.placeholder_positions) if p == 0]
        warnings.warn(
            f"{what} {prompt!r} is {length} tokens"
            f"{' with its subject clauses' if labels else ''}; truncated to {max_length}"
            + (f"; subjects {cut} lost their placeholder and are not fused" if cut else ""),
            stacklevel=3,
        )
    return template
