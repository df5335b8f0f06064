"""The metrics of SPEC §6 recomputed by hand on small, hand-made probe rows."""

from __future__ import annotations

import json
import math

import pytest

from knowpack.evaluate import metrics as M
from knowpack.facts import Fact


def row(fid: str, category: str, answers: list[str], correct: list[bool] | None = None,
        refused: list[bool] | None = None) -> dict:
    correct = correct if correct is not None else [False] * len(answers)
    return {"id": fid, "category": category, "p_greedy": sum(correct) / len(answers), "p_sample": 0.0,
            "greedy_answers": answers, "greedy_correct": correct,
            "refused": refused if refused is not None else [False] * len(answers)}


# six facts, chosen moves: UK->HK, UK->UK, WK->MK, HK->MK, MK->UK, HK->HK
MOVES = {"f1": ("Unknown", "HighlyKnown"), "f2": ("Unknown", "Unknown"), "f3": ("WeaklyKnown", "MaybeKnown"),
         "f4": ("HighlyKnown", "MaybeKnown"), "f5": ("MaybeKnown", "Unknown"), "f6": ("HighlyKnown", "HighlyKnown")}


def shift_rows():
    before = [row(f, b, ["x", "y"]) for f, (b, _) in MOVES.items()]
    after = [row(f, a, ["x", "y"]) for f, (_, a) in MOVES.items()]
    return before, after


def test_transition_matrix_counts_and_shifts():
    before, after = shift_rows()
    t = M.transition_matrix(before, after, list(MOVES))
    assert t["categories"] == ["HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown"]
    assert t["counts"] == [[1, 1, 0, 0],   # HK -> HK (f6), MK (f4)
                           [0, 0, 0, 1],   # MK -> UK (f5)
                           [0, 1, 0, 0],   # WK -> MK (f3)
                           [1, 0, 0, 1]]   # UK -> HK (f1), UK (f2)
    assert (t["positive_count"], t["negative_count"], t["unchanged_count"]) == (2, 2, 2)
    assert t["positive_shift"] == pytest.approx(2 / 6) and t["negative_shift"] == pytest.approx(2 / 6)
    assert t["denominator"] == 6 and "evaluation" in t["denominator_counts"]
    assert t["moves"] == {"HK->MK": 1, "MK->UK": 1, "UK->HK": 1, "WK->MK": 1}
    assert t["before_counts"] == {"HighlyKnown": 2, "MaybeKnown": 1, "WeaklyKnown": 1, "Unknown": 2}
    assert t["after_counts"] == {"HighlyKnown": 2, "MaybeKnown": 2, "WeaklyKnown": 0, "Unknown": 2}


def test_every_rank_increase_is_positive():
    cats = ["Unknown", "WeaklyKnown", "MaybeKnown", "HighlyKnown"]
    pairs = [(b, a) for b in cats for a in cats]
    before = [row(f"p{i}", b, ["a"]) for i, (b, _) in enumerate(pairs)]
    after = [row(f"p{i}", a, ["a"]) for i, (_, a) in enumerate(pairs)]
    t = M.transition_matrix(before, after, [r["id"] for r in before])
    # 6 upward moves (UK->WK,MK,HK; WK->MK,HK; MK->HK) and 6 downward ones, 4 unchanged
    assert (t["positive_count"], t["negative_count"], t["unchanged_count"]) == (6, 6, 4)


def test_missing_ids_and_bad_category_are_clear_errors():
    before, after = shift_rows()
    with pytest.raises(ValueError, match="no row in the before-training probe: f9"):
        M.transition_matrix(before, after, ["f1", "f9"])
    with pytest.raises(ValueError, match="unknown category 'Known'"):
        M.transition_matrix([row("a", "Known", ["x"])], [row("a", "Unknown", ["x"])], ["a"])


def test_answer_collapse_excludes_refusals():
    rows = [row("a", "Unknown", ["Paris", "paris.", "Rome", "I don't know"], refused=[False, False, False, True])]
    c = M.answer_collapse(rows, top=10)
    assert (c["distinct"], c["n_answers"], c["refusals_excluded"]) == (2, 3, 1)
    assert c["mean_frequency"] == pytest.approx(1.5)
    assert c["std_frequency"] == pytest.approx(0.5)
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert c["entropy"] == pytest.approx(h)
    assert c["normalised_entropy"] == pytest.approx(h / math.log(2))
    assert c["top"] == [{"answer": "paris", "count": 2, "share": pytest.approx(2 / 3)},
                        {"answer": "rome", "count": 1, "share": pytest.approx(1 / 3)}]
    assert c["denominator"] == 3
    # with a 50% threshold only "paris" (2/3) is exploded
    assert [e["answer"] for e in M.answer_collapse(rows, exploded_share=0.5)["exploded"]] == ["paris"]


def test_answer_collapse_edge_cases():
    one = M.answer_collapse([row("a", "Unknown", ["Paris", "paris"])])
    assert one["distinct"] == 1 and one["normalised_entropy"] == 0.0 and one["std_frequency"] == 0.0
    none = M.answer_collapse([row("a", "Unknown", ["I don't know"], refused=[True])])
    assert none["distinct"] == 0 and none["normalised_entropy"] is None and none["mean_frequency"] is None
    flags = M.answer_collapse([row("a", "Unknown", ["x", "y"])], refusal_flags=[[True, False]])
    assert flags["n_answers"] == 1 and flags["refusals_excluded"] == 1


def test_refusal_rate_and_change():
    before = [row("a", "Unknown", ["I don't know", "x"], refused=[True, False]),
              row("b", "Unknown", ["no information", "I don't know"], refused=[True, True])]
    after = [row("a", "Unknown", ["x", "x"]), row("b", "Unknown", ["y", "I don't know"], refused=[False, True])]
    r = M.refusal_rate(before)
    assert r["value"] == pytest.approx(3 / 4) and r["denominator"] == 4 and r["facts_with_refusal"] == 2
    ch = M.refusal_change(before, after, ["a", "b"])
    assert ch["before"] == pytest.approx(0.75) and ch["after"] == pytest.approx(0.25)
    assert ch["change"] == pytest.approx(-0.5) and ch["denominator"] == 4


def test_locality_with_one_changed_answer():
    before = [row("a", "HighlyKnown", ["Paris", "Paris"]), row("b", "Unknown", ["Rome", "Oslo"])]
    after = [row("a", "HighlyKnown", ["paris.", "The Paris"]), row("b", "Unknown", ["Rome", "Bern"])]
    loc = M.locality(before, after, ["a", "b"])
    assert loc["value"] == pytest.approx(0.5) and loc["changed_ids"] == ["b"]
    assert loc["per_prompt"] == pytest.approx(3 / 4) and loc["per_prompt_denominator"] == 4
    with pytest.raises(ValueError, match="same settings"):
        M.locality([row("a", "Unknown", ["x"])], [row("a", "Unknown", ["x", "y"])], ["a"])


def test_reliability_headline_and_shares():
    after = [row("a", "HighlyKnown", ["x"] * 4, [True] * 4),
             row("b", "MaybeKnown", ["x"] * 4, [True, True, False, False]),
             row("c", "MaybeKnown", ["x"] * 4, [True, False, False, False]),
             row("d", "Unknown", ["x"] * 4)]
    before = [row(i, "Unknown", ["x"] * 4) for i in "abcd"]
    r = M.reliability(after, list("abcd"), rows_before=before)
    assert r["value"] == pytest.approx((1 + 0.5 + 0.25 + 0) / 4) and r["headline"] == "mean_p_greedy"
    assert r["share_p_greedy_ge_half"] == pytest.approx(0.5)
    assert r["share_all_prompts_correct"] == pytest.approx(0.25)
    assert r["share_known_after"] == pytest.approx(0.75)
    assert (r["answers_correct"], r["n_answers"], r["denominator"]) == (7, 16, 4)
    assert r["before_value"] == 0.0
    assert M.reliability(after, [])["value"] is None
    assert M.learned_ids(after, list("abcd"), before) == ["a", "b"]


FACTS = [Fact("a", "Capital of France?", ("Paris", "Paris, France")), Fact("b", "Capital of Italy?", ("Rome",)),
         Fact("c", "Who wrote it?", ("Unknown Pleasures",))]


def test_zero_shot_reliability():
    z = M.zero_shot_reliability(["It is Paris.", "I don't know Rome", "Unknown Pleasures"], FACTS, ["a", "b", "c"])
    # a matches; b is a refusal (never correct); c's alias contains "unknown", so it is no refusal
    assert z["value"] == pytest.approx(2 / 3) and z["failed_ids"] == ["b"] and z["denominator"] == 3
    exact = M.zero_shot_reliability(["It is Paris."], FACTS, ["a"], "exact")
    assert exact["value"] == 0.0
    with pytest.raises(ValueError, match="one answer per id"):
        M.zero_shot_reliability(["x"], FACTS, ["a", "b"])


def test_generalisation_pairs_and_per_fact():
    g = M.generalisation({"a": ["Paris", "Lyon", "paris"], "b": ["Rome"]}, FACTS, ["a", "b", "c"])
    assert g["value"] == pytest.approx(3 / 4) and g["denominator"] == 4
    assert g["per_fact_mean"] == pytest.approx((2 / 3 + 1) / 2) and g["per_fact_denominator"] == 2
    assert g["per_fact_share_all_correct"] == pytest.approx(0.5)
    assert g["facts_without_paraphrases"] == 1


def test_benchmark_drop_and_zero_base():
    d = M.benchmark_drop(0.8, 0.6)
    assert d["absolute"] == pytest.approx(0.2) and d["relative"] == pytest.approx(0.25)
    z = M.benchmark_drop(0.0, 0.1)
    assert z["absolute"] == pytest.approx(-0.1) and z["relative"] is None


def test_capacity_numbers():
    assert M.bits_per_fact(1) == 0.0 and M.bits_per_fact(64) == 6.0
    c = M.capacity(100, M.bits_per_fact(1024), 250)
    assert c["total_bits"] == 1000 and c["value"] == pytest.approx(4.0)
    assert c["share_of_reference"] == pytest.approx(2.0) and c["reference_bits_per_param"] == 2.0
    assert M.capacity(3, 2.0, 0)["value"] is None
    with pytest.raises(ValueError):
        M.bits_per_fact(0)


def test_compute_metrics_is_json_ready_and_consistent():
    before, after = shift_rows()
    trained = [row("t1", "Unknown", ["Paris", "Lyon"]), row("t2", "Unknown", ["Oslo", "Oslo"])]
    trained_after = [row("t1", "HighlyKnown", ["Paris", "Paris"], [True, True]),
                     row("t2", "MaybeKnown", ["Rome", "Oslo"], [True, False])]
    facts = [Fact("t1", "Capital of France?", ("Paris",), relation="capital"),
             Fact("t2", "Capital of Italy?", ("Rome",), relation="capital", paraphrases=("Italy's capital?",))]
    rec = M.compute_metrics(facts, before + trained, after + trained_after, ["t1", "t2"], list(MOVES),
                            zero_shot_answers=["Paris", "Milan"], paraphrase_answers={"t2": ["Rome"]},
                            benchmarks_before={"mc": {"accuracy": 0.5, "n": 40}, "arith": 0.9},
                            benchmarks_after={"mc": 0.4, "arith": 0.9},
                            trainable_params=10, answer_space_size={"capital": 16})
    json.dumps(rec)  # plain JSON types only
    h = rec["headline"]
    assert h["reliability"] == pytest.approx(0.75) and h["reliability_zero_shot"] == pytest.approx(0.5)
    assert h["generalisation_zero_shot"] == 1.0
    assert h["positive_shift"] == pytest.approx(1 / 3) and h["negative_shift"] == pytest.approx(1 / 3)
    assert h["benchmark_drop"] == {"arith": pytest.approx(0.0), "mc": pytest.approx(0.1)}
    assert h["mean_benchmark_drop_relative"] == pytest.approx(0.1)
    # learned: t1 (1.0) and t2 (0.5); 2 facts x 4 bits / 10 params
    assert h["learned_facts"] == 2 and h["bits_per_param"] == pytest.approx(0.8)
    assert rec["benchmarks"]["mc"]["n_questions"] == 40
    assert rec["knowledge_shift"]["denominator"] == 6 and rec["locality"]["value"] == 1.0
    for section in ("knowledge_shift", "refusals", "locality", "capacity"):
        assert rec[section]["definition"] and isinstance(rec[section]["denominator"], int)
    bare = M.compute_metrics(facts, before + trained, after + trained_after, ["t1", "t2"], list(MOVES))
    assert bare["reliability"]["zero_shot"] is None and bare["benchmarks"] is None and bare["capacity"] is None
