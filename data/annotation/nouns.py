"""Nouns of a caption with spaCy's part-of-speech tagger, and count words for repeated boxes."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence

from data.annotation.items import Drop, Dropped, Item
from data.annotation.step import ModelStep
from sdjax.sampling.segment import ModelFolderError

NOUN = "NOUN"
# The reference data_process.py writes counts from two to six as words.
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
ARTICLES = ("a", "an")  # replaced by the count word


def unique(words: Sequence[str]) -> tuple[str, ...]:
    """The words in order, each once."""
    return tuple(dict.fromkeys(words))


def add_count_words(
    words: Sequence[str], spaces: Sequence[str], lemmas: Sequence[str], counts: Mapping[str, int]
) -> str:
    """The caption with a count word before the first word of each lemma counted two to six
    times, in place of an article before it, unless a number already precedes it; words and
    spaces are the caption's tokens."""
    out = [w + s for w, s in zip(words, spaces, strict=True)]
    for lemma, count in counts.items():
        if count not in NUMBER_WORDS or lemma not in lemmas:
            continue
        index = lemmas.index(lemma)
        previous = words[index - 1].lower() if index else ""
        if previous.isdigit() or previous in NUMBER_WORDS.values():
            continue
        if previous in ARTICLES:  # "a dog" -> "two dog", not "a two dog"
            out[index - 1] = ""
        out[index] = NUMBER_WORDS[count] + " " + out[index]
    return "".join(out)


def counted_caption(item: Item) -> str:
    """The item's caption with count words for its labels (boxes per label, two to six)."""
    lemma_of = {word.lower(): lemma for word, lemma in zip(item.words, item.lemmas, strict=True)}
    counts = collections.Counter(lemma_of.get(label, label) for label in item.labels)
    return add_count_words(item.words, item.spaces, item.lemmas, counts)


@dataclasses.dataclass
class NounTagger(ModelStep):
    """Tags each caption (`model` is the spaCy pipeline); keeps images whose caption has
    `min_nouns`..`max_nouns` distinct nouns."""

    def load(self) -> None:
        import spacy

        try:
            self.model = spacy.load(self.options.tagger)
        except OSError as error:
            raise ModelFolderError(
                f"spaCy pipeline {self.options.tagger!r} not found ({error}); install the "
                "annotate extra (pip install -e '.[annotate]') or pass --tagger PATH"
            ) from None

    def run(self, items: Sequence[Item]) -> list[Item | Dropped]:
        results: list[Item | Dropped] = []
        for item, doc in zip(items, self.model.pipe(item.caption for item in items), strict=True):
            item.words = tuple(t.text for t in doc)
            item.spaces = tuple(t.whitespace_ for t in doc)
            item.lemmas = tuple(t.lemma_.lower() for t in doc)
            item.nouns = unique([t.text.lower() for t in doc if t.pos_ == NOUN and t.is_alpha])
            results.append(self._check(item))
        return results

    def _check(self, item: Item) -> Item | Dropped:
        detail = f"{len(item.nouns)} in {item.caption!r}, {self.options.min_nouns} to "
        detail += f"{self.options.max_nouns} wanted"
        if len(item.nouns) < self.options.min_nouns:
            return Dropped(item.key, Drop.FEW_NOUNS, detail)
        if len(item.nouns) > self.options.max_nouns:
            return Dropped(item.key, Drop.MANY_NOUNS, detail)
        return item
