"""Answer matching, refusals and SliCK category rules on hand-made answers (knowpack.probe.match/slick)."""

from __future__ import annotations

import pytest

from knowpack.probe.match import DEFAULT_REFUSAL_PATTERNS, is_correct, is_refusal, matches, normalize
from knowpack.probe.slick import CATEGORIES, categorize


@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an  Apple,  a day ", "apple day"),
    ("I don't know.", "i dont know"),
    ("I don’t know", "i dont know"),
    ("Théâtre   du Soleil", "théâtre du soleil"),
    ("", ""),
    ("...", ""),
])
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_contains_and_exact():
    assert matches("It is Paris, of course.", ["paris"])
    assert matches("Paris", ["Berlin", "The Paris"])
    assert not matches("Paris", ["Berlin"])
    assert matches("paris", ["Paris."], "exact")
    assert not matches("Paris, France", ["Paris"], "exact")
    assert matches("the Paris", ["Paris"], "exact")
    with pytest.raises(ValueError, match="match mode"):
        matches("x", ["x"], "fuzzy")


@pytest.mark.parametrize("mode", ["contains", "exact"])
def test_empty_alias_never_matches(mode):
    # The reference's trap: "" is contained in every answer.
    assert not matches("anything at all", [""], mode)
    assert not matches("anything at all", ["", "   ", "the", "?!"], mode)
    assert not matches("", [""], mode)
    assert matches("Rome", ["", "rome"], mode)


def test_every_refusal_pattern_is_checked():
    patterns = ["I don't know", "no information", "I cannot verify"]
    # The reference notebook's `a or b or c in x` checked one pattern only; the 3rd must count.
    assert is_refusal("Sorry, I cannot verify that.", patterns)
    assert is_refusal("There is no information about it", patterns)
    assert is_refusal("i DON'T know", patterns)
    assert not is_refusal("Paris", patterns)
    for p in DEFAULT_REFUSAL_PATTERNS:
        assert is_refusal(f"Well, {p}.", DEFAULT_REFUSAL_PATTERNS), p


def test_refusal_needs_whole_words():
    assert not is_refusal("Unknownville", ["unknown"])
    assert is_refusal("Unknown.", ["unknown"])


def test_refusal_is_never_correct():
    assert not is_correct("I don't know, maybe Paris", ["Paris"])
    assert is_correct("I don't know, maybe Paris", ["Paris"], refusal_patterns=None)
    assert is_correct("Paris", ["Paris"])


def test_pattern_inside_own_alias_is_not_a_refusal():
    assert is_correct("Unknown Pleasures", ["Unknown Pleasures"])
    assert not is_correct("Unknown", ["Closer"])


@pytest.mark.parametrize("p_greedy, p_sample, category", [
    (1.0, 1.0, "HighlyKnown"),
    (1.0, 0.0, "HighlyKnown"),
    (1.0, None, "HighlyKnown"),
    (0.1, 0.0, "MaybeKnown"),
    (0.9, 1.0, "MaybeKnown"),
    (0.0, 1 / 160, "WeaklyKnown"),
    (0.0, 0.0, "Unknown"),
    (0.0, None, "Unknown"),
])
def test_categories(p_greedy, p_sample, category):
    assert categorize(p_greedy, p_sample) == category
    assert category in CATEGORIES
