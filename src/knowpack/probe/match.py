"""Answer matching and refusal detection (SPEC §3).

    from knowpack.probe.match import is_correct, is_refusal
    is_correct("It is Paris.", ["paris"])            # True  (contains, the paper's default)
    is_correct("Paris, France", ["Paris"], "exact")  # False (exact, Gekhman)

Normalisation: lower case, punctuation removed, the articles a/an/the dropped, whitespace collapsed.
An alias that normalises to nothing never matches: under `contains` the empty string would be found
in every answer, which is how the reference scored empty aliases as known.

A refusal is an answer matching any of the refusal patterns (case-insensitive, after the same
normalisation, so "I don't know." and "i dont know" both count). Every pattern is tried, unlike the
reference notebook whose `a or b or c in x` tested only the last one. A refusal is never correct,
except that a pattern found in one of the fact's own aliases is ignored for that fact (an answer
"Unknown Pleasures" to a question whose answer it is must not count as a refusal).
"""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Iterable, Sequence

MATCH_MODES = ("contains", "exact")

DEFAULT_REFUSAL_PATTERNS: tuple[str, ...] = (
    "I don't know",
    "I do not know",
    "not sure",
    "I couldn't find",
    "I could not find",
    "I can't find",
    "I cannot find",
    "I cannot verify",
    "I can't verify",
    "I'm unable to",
    "I am unable to",
    "no information",
    "no reliable information",
    "unknown",
)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "‘’“”«»–—…"})
_APOSTROPHES = str.maketrans({"'": "", "’": "", "‘": ""})


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD-style, Unicode-aware).

    Apostrophes are dropped rather than spaced ("don't" -> "dont"), so contractions stay one word.
    """
    text = unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES).translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _contains_words(haystack: str, needle: str) -> bool:
    """`needle` occurs in `haystack` as a run of whole words (both normalised)."""
    return f" {needle} " in f" {haystack} "


def matches(answer: str, aliases: Iterable[str], mode: str = "contains") -> bool:
    """Whether the answer matches any alias under `mode` ("contains" or "exact"), after normalisation.

    `contains` is a substring test on the normalised strings, as in the paper's evaluation.
    """
    if mode not in MATCH_MODES:
        raise ValueError(f"unknown match mode '{mode}'; use one of: {', '.join(MATCH_MODES)}")
    a = normalize(answer)
    for alias in aliases:
        n = normalize(alias)
        if not n:
            continue
        if (n in a) if mode == "contains" else (n == a):
            return True
    return False


class RefusalDetector:
    """Matches answers against refusal patterns; every pattern is checked."""

    def __init__(self, patterns: Sequence[str] = DEFAULT_REFUSAL_PATTERNS):
        self.patterns = tuple(patterns)
        self._norm = [p for p in (normalize(p) for p in self.patterns) if p]

    def __call__(self, answer: str, aliases: Iterable[str] = ()) -> bool:
        """Whether `answer` is a refusal; patterns occurring in any of `aliases` are not used."""
        a = normalize(answer)
        own = [n for n in (normalize(x) for x in aliases) if n]
        return any(_contains_words(a, p) and not any(_contains_words(n, p) for n in own) for p in self._norm)


def is_refusal(answer: str, patterns: Sequence[str] = DEFAULT_REFUSAL_PATTERNS, aliases: Iterable[str] = ()) -> bool:
    """Whether the answer matches any of `patterns` (as whole words, after normalisation)."""
    return RefusalDetector(patterns)(answer, aliases)


def is_correct(answer: str, aliases: Iterable[str], mode: str = "contains",
               refusal_patterns: Sequence[str] | None = DEFAULT_REFUSAL_PATTERNS) -> bool:
    """A correct answer matches an alias and is not a refusal (pass `refusal_patterns=None` to skip that)."""
    aliases = list(aliases)
    if refusal_patterns and is_refusal(answer, refusal_patterns, aliases):
        return False
    return matches(answer, aliases, mode)
