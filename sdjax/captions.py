"""Whether an entity's label is mentioned in its caption: one rule for the record builder (Python
`re`) and the reader (TensorFlow's RE2), so both keep the same entities.

A label is mentioned when its words occur as whole words, in any case, the last one maybe plural
(`s`/`es`): "cat" is in "Two cats", not in "a category". The pattern is built by `+` alone, so the
same functions take Python strings and TensorFlow string tensors; both engines read it alike
(ASCII word characters; `re` is run with `re.ASCII`).
"""

from __future__ import annotations

import re

# ASCII punctuation: the characters escaped in a label (RE2 rejects escaping anything else).
PUNCTUATION = r"([!-/:-@\[-`{-~])"
ESCAPE = r"\\\1"
WORD_GAP = r"\s+"
PLURAL = "(?:s|es)?"


def mention_pattern(escaped_label):
    """Full-match pattern of a caption mentioning the (escaped) label; str or string tensor."""
    return r"(?is)(?:.*\W)?" + escaped_label + PLURAL + r"(?:\W.*)?"


def escape_word(word: str) -> str:
    """A label word as a literal in the pattern."""
    return re.sub(PUNCTUATION, ESCAPE, word)


def label_in_caption(label: str, caption: str) -> bool:
    """Whether `label` (one or more words) is mentioned in `caption`."""
    words = label.split()
    if not words:
        return False
    escaped = WORD_GAP.join(escape_word(word) for word in words)
    return re.fullmatch(mention_pattern(escaped), caption, re.ASCII) is not None
