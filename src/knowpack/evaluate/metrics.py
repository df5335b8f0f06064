"""The metrics of SPEC §6 as pure functions over probe rows, answers and scores (no model calls).

    from knowpack.evaluate.metrics import compute_metrics
    record = compute_metrics(facts, before_rows, after_rows, trained_ids, eval_ids,
                             zero_shot_answers=answers, benchmarks_before={"mc": 0.61},
                             benchmarks_after={"mc": 0.58}, trainable_params=12_288)
    write_json(run_dir / "metrics.json", record)

Probe rows are those of `knowpack.probe.slick.probe_facts`: `id`, `category`, `p_greedy`,
`p_sample`, `greedy_answers`, `greedy_correct`, `refused`. Every metric returns a dict with its
value(s), a one-sentence `definition`, an integer `denominator` and `denominator_counts` (what the
denominator counts), so `metrics.json` explains itself. A value whose denominator is 0 is None
(JSON null): undefined, never silently 0.

Choices made here (the papers leave them open):
- Reliability's headline `value` is the mean P_greedy over the trained facts, i.e. the share of
  correct greedy answers over all (trained fact, few-shot prompt) pairs, each fact weighing the
  same. With one prompt per fact it is the paper's share of trained facts answered correctly, and
  it is what the knowledge-packing paper plots as "mean reliability". The share of facts with
  P_greedy >= 0.5 and the share in HighlyKnown/MaybeKnown are reported beside it.
- Answers are compared after `probe.match.normalize`; refusals are never correct.
- A fact counts as *learned* (capacity) when its P_greedy is >= 0.5 after training and was < 0.5
  before.
- Every share carries `ci95` (evaluate/stats.py): Wilson for a share of independent units (facts,
  questions), a bootstrap over facts for shares of answers (a fact's prompts are correlated), a
  paired bootstrap (with McNemar's exact test) for a before/after difference on the same units.
- Knowledge shift is shown beside its noise floor: the shift between the base model's probe and a
  control probe of the same base model under another sampling seed (`control_rows`). With common
  random numbers an unchanged model shows no shift at all; the floor says how much of the category
  boundary (WeaklyKnown vs Unknown) is sampling luck, i.e. how large a shift sampling alone produces.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

from knowpack.evaluate import stats
from knowpack.facts import Fact
from knowpack.probe.match import DEFAULT_REFUSAL_PATTERNS, MATCH_MODES, RefusalDetector, matches, normalize
from knowpack.probe.slick import CATEGORIES

SCHEMA = "knowpack.metrics/2"
#: Allen-Zhu & Li, "Physics of Language Models: Part 3.3" (2024): ~2 bits of knowledge per parameter.
REFERENCE_BITS_PER_PARAM = 2.0
LEARNED_THRESHOLD = 0.5
#: "exploded" answers: more than this share of all greedy answers. The knowledge-packing paper's
#: notebook counts an answer as exploded above 850 occurrences among its 210,360 greedy answers
#: (21,036 questions x 10 prompts), i.e. about 0.4%.
DEFAULT_EXPLODED_SHARE = 0.004
#: knowledge order used for shifts: higher is better known
RANK = {"Unknown": 0, "WeaklyKnown": 1, "MaybeKnown": 2, "HighlyKnown": 3}
SHORT = {"HighlyKnown": "HK", "MaybeKnown": "MK", "WeaklyKnown": "WK", "Unknown": "UK"}

Row = Mapping[str, Any]


# --- helpers -----------------------------------------------------------------------------------


def _ratio(num: float, den: int) -> float | None:
    return num / den if den else None


def _index(rows: Sequence[Row], ids: Sequence[str], what: str) -> list[Row]:
    """The rows of `ids`, in order; a clear error listing the ids that have no row."""
    by_id = {r["id"]: r for r in rows}
    missing = [i for i in ids if i not in by_id]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} of {len(ids)} ids have no row in the {what}: {shown}; "
                         f"probe these facts too (the same ids before and after training)")
    return [by_id[i] for i in ids]


def _fact_map(facts: Iterable[Fact] | Mapping[str, Fact]) -> Mapping[str, Fact]:
    if isinstance(facts, Mapping):
        return facts
    return {f.id: f for f in facts}


def _check_category(row: Row) -> str:
    cat = row["category"]
    if cat not in RANK:
        raise ValueError(f"fact '{row['id']}' has unknown category '{cat}'; expected one of {', '.join(CATEGORIES)}")
    return cat


def _correct(answer: str, fact: Fact, match: str, refusal: RefusalDetector | None) -> bool:
    if refusal is not None and refusal(answer, fact.answers):
        return False
    return matches(answer, fact.answers, match)


def _detector(patterns: Sequence[str] | None) -> RefusalDetector | None:
    return RefusalDetector(patterns) if patterns else None


# --- reliability and generalisation -------------------------------------------------------------


def reliability(rows_after: Sequence[Row], trained_ids: Sequence[str], *,
                rows_before: Sequence[Row] | None = None) -> dict[str, Any]:
    """Few-shot reliability of the trained facts from the after-training probe.

    `value` = mean P_greedy over trained facts; also the share with P_greedy >= 0.5, the share with
    P_greedy = 1, and the share whose category after is HighlyKnown or MaybeKnown. With
    `rows_before`, the same mean before training is added as `before_value`.
    """
    rows = _index(rows_after, trained_ids, "after-training probe")
    n = len(rows)
    n_answers = sum(len(r["greedy_answers"]) for r in rows)
    ge_half = sum(r["p_greedy"] >= LEARNED_THRESHOLD for r in rows)
    interval = stats.mean_interval([r["p_greedy"] for r in rows])
    out: dict[str, Any] = {
        "value": _ratio(sum(r["p_greedy"] for r in rows), n),
        "ci95": interval["ci95"], "ci_method": interval["method"],
        "share_p_greedy_ge_half_ci95": stats.wilson(ge_half, n)["ci95"],
        "mean_p_greedy": _ratio(sum(r["p_greedy"] for r in rows), n),
        "share_p_greedy_ge_half": _ratio(ge_half, n),
        "share_all_prompts_correct": _ratio(sum(r["p_greedy"] >= 1.0 for r in rows), n),
        "share_known_after": _ratio(sum(_check_category(r) in ("HighlyKnown", "MaybeKnown") for r in rows), n),
        "answers_correct": sum(sum(bool(x) for x in r["greedy_correct"]) for r in rows),
        "n_answers": n_answers,
        "headline": "mean_p_greedy",
        "definition": "mean over trained facts of P_greedy after training (share of the fact's few-shot "
                      "prompts whose greedy answer matches an alias); equals the share of correct greedy "
                      "answers over all (fact, prompt) pairs when every fact has the same number of prompts",
        "denominator": n,
        "denominator_counts": "trained facts (re-probed after training)",
    }
    if rows_before is not None:
        before = _index(rows_before, trained_ids, "before-training probe")
        out["before_value"] = _ratio(sum(r["p_greedy"] for r in before), n)
    return out


def zero_shot_reliability(answers: Sequence[str], facts: Iterable[Fact] | Mapping[str, Fact], ids: Sequence[str],
                          match: str = "contains", *,
                          refusal_patterns: Sequence[str] | None = DEFAULT_REFUSAL_PATTERNS) -> dict[str, Any]:
    """Share of facts `ids` whose zero-shot greedy answer (`answers[i]` answers `ids[i]`) matches an alias."""
    if len(answers) != len(ids):
        raise ValueError(f"got {len(answers)} zero-shot answers for {len(ids)} facts; pass one answer per id, in order")
    if match not in MATCH_MODES:
        raise ValueError(f"unknown match mode '{match}'; use one of: {', '.join(MATCH_MODES)}")
    fmap, refusal = _fact_map(facts), _detector(refusal_patterns)
    ok = [_correct(a, fmap[i], match, refusal) for a, i in zip(answers, ids)]
    interval = stats.wilson(sum(ok), len(ids))
    return {
        "value": _ratio(sum(ok), len(ids)),
        "ci95": interval["ci95"], "ci_method": interval["method"],
        "correct": sum(ok),
        "failed_ids": [i for i, good in zip(ids, ok) if not good],
        "match": match,
        "definition": "share of trained facts whose zero-shot greedy answer to the training-format prompt "
                      f"matches one of the fact's aliases ({match}, after normalisation; refusals never match)",
        "denominator": len(ids),
        "denominator_counts": "trained facts",
    }


def generalisation(answers_by_fact: Mapping[str, Sequence[str]], facts: Iterable[Fact] | Mapping[str, Fact],
                   ids: Sequence[str], match: str = "contains", *,
                   refusal_patterns: Sequence[str] | None = DEFAULT_REFUSAL_PATTERNS,
                   mode: str = "zero-shot") -> dict[str, Any]:
    """Reliability on held-out paraphrases: per (fact, paraphrase) pair and per fact.

    `answers_by_fact[id]` holds the greedy answers to that fact's held-out paraphrases (one per
    paraphrase zero-shot; one per paraphrase and prompt few-shot). Facts of `ids` without any
    answer (no held-out paraphrase) are left out and counted in `facts_without_paraphrases`.
    """
    fmap, refusal = _fact_map(facts), _detector(refusal_patterns)
    per_fact: list[float] = []
    counts: list[tuple[int, int]] = []
    all_ok = 0
    without = 0
    for fid in ids:
        answers = list(answers_by_fact.get(fid, ()))
        if not answers:
            without += 1
            continue
        ok = [_correct(a, fmap[fid], match, refusal) for a in answers]
        counts.append((sum(ok), len(ok)))
        per_fact.append(sum(ok) / len(ok))
        all_ok += all(ok)
    n_facts = len(per_fact)
    correct, pairs = sum(c for c, _ in counts), sum(t for _, t in counts)
    interval = stats.cluster_share([c for c, _ in counts], [t for _, t in counts])
    return {
        "value": _ratio(correct, pairs),
        "ci95": interval["ci95"], "ci_method": interval["method"],
        "correct": correct,
        "per_fact_mean": _ratio(sum(per_fact), n_facts),
        "per_fact_share_ge_half": _ratio(sum(x >= LEARNED_THRESHOLD for x in per_fact), n_facts),
        "per_fact_share_all_correct": _ratio(all_ok, n_facts),
        "n_facts": n_facts,
        "facts_without_paraphrases": without,
        "mode": mode,
        "definition": f"share of ({mode}) greedy answers to held-out (never trained) paraphrases of the trained "
                      f"facts that match an alias ({match}); per-fact figures average each fact's share",
        "denominator": pairs,
        "denominator_counts": "(trained fact, held-out paraphrase answer) pairs",
        "per_fact_denominator": n_facts,
        "per_fact_denominator_counts": "trained facts with at least one held-out paraphrase",
    }


# --- knowledge shift ---------------------------------------------------------------------------


def _moves(before: Sequence[Row], after: Sequence[Row]) -> tuple[list[int], list[int]]:
    """Per fact, 1 where its category rose (positive shift) / fell (negative shift) from before to after."""
    up = [int(RANK[_check_category(a)] > RANK[_check_category(b)]) for b, a in zip(before, after)]
    down = [int(RANK[_check_category(a)] < RANK[_check_category(b)]) for b, a in zip(before, after)]
    return up, down


def transition_matrix(before_rows: Sequence[Row], after_rows: Sequence[Row], ids: Sequence[str], *,
                      control_rows: Sequence[Row] | None = None) -> dict[str, Any]:
    """4x4 category transition counts (rows: before, columns: after) and positive/negative shift.

    With `control_rows` (the base model re-probed under another sampling seed) the shift that sampling
    alone produces is added as `noise_floor`, and `excess_*` gives shift - floor with a paired
    bootstrap interval over the facts.
    """
    before = _index(before_rows, ids, "before-training probe")
    after = _index(after_rows, ids, "after-training probe")
    pos = {c: i for i, c in enumerate(CATEGORIES)}
    counts = [[0] * len(CATEGORIES) for _ in CATEGORIES]
    moves: Counter[str] = Counter()
    for b, a in zip(before, after):
        cb, ca = _check_category(b), _check_category(a)
        counts[pos[cb]][pos[ca]] += 1
        if ca != cb:
            moves[f"{SHORT[cb]}->{SHORT[ca]}"] += 1
    up, down = _moves(before, after)
    positive, negative = sum(up), sum(down)
    n = len(ids)
    out: dict[str, Any] = {
        "categories": list(CATEGORIES),
        "counts": counts,
        "positive_shift": _ratio(positive, n),
        "negative_shift": _ratio(negative, n),
        "positive_shift_ci95": stats.wilson(positive, n)["ci95"],
        "negative_shift_ci95": stats.wilson(negative, n)["ci95"],
        "ci_method": stats.wilson(positive, n)["method"],
        "positive_count": positive,
        "negative_count": negative,
        "unchanged_count": n - positive - negative,
        "moves": dict(sorted(moves.items(), key=lambda kv: (-kv[1], kv[0]))),
        "before_counts": {c: sum(counts[pos[c]]) for c in CATEGORIES},
        "after_counts": {c: sum(row[pos[c]] for row in counts) for c in CATEGORIES},
        "definition": "category of each evaluation fact before -> after training (counts[before][after], order "
                      "HighlyKnown, MaybeKnown, WeaklyKnown, Unknown); positive shift = UK->{WK,MK,HK}, WK->{MK,HK}, "
                      "MK->HK; negative shift = the reverse moves; both as fractions of the evaluation sample",
        "denominator": n,
        "denominator_counts": "untrained evaluation facts re-probed before and after",
        "noise_floor": None,
    }
    if control_rows is not None:
        control = _index(control_rows, ids, "control probe")
        c_up, c_down = _moves(before, control)
        out["noise_floor"] = {
            "positive_shift": _ratio(sum(c_up), n), "negative_shift": _ratio(sum(c_down), n),
            "positive_shift_ci95": stats.wilson(sum(c_up), n)["ci95"],
            "negative_shift_ci95": stats.wilson(sum(c_down), n)["ci95"],
            "definition": "the shift between the base model's probe and a control probe of the same base model "
                          "with another sampling seed (same prompts, so only sampled answers differ): what "
                          "sampling alone moves across the WeaklyKnown/Unknown border",
            "denominator": n, "denominator_counts": "the same evaluation facts",
        }
        for name, run, floor in (("positive", up, c_up), ("negative", down, c_down)):
            diff = stats.paired_difference(floor, run)
            out[f"excess_{name}_shift"] = _ratio(sum(run) - sum(floor), n)
            out[f"excess_{name}_shift_ci95"] = diff["ci95"]
        out["excess_definition"] = ("shift minus its noise floor, per fact (paired): an excess whose interval "
                                    "holds 0 is not told apart from sampling noise")
    return out


# --- answer collapse and refusals --------------------------------------------------------------


def answer_collapse(rows: Sequence[Row], refusal_flags: Sequence[Sequence[bool]] | None = None, *,
                    exploded_share: float = DEFAULT_EXPLODED_SHARE, top: int = 10) -> dict[str, Any]:
    """Diversity of all greedy answers of `rows` (normalised), refusals excluded.

    `refusal_flags[i][j]` marks answer j of row i as a refusal; default: each row's `refused`.
    Normalised entropy is H / ln(distinct); it is 0 when a single distinct answer remains (total
    collapse) and None when there are no answers.
    """
    if refusal_flags is not None and len(refusal_flags) != len(rows):
        raise ValueError(f"refusal_flags has {len(refusal_flags)} entries for {len(rows)} rows")
    counter: Counter[str] = Counter()
    refused = 0
    for i, row in enumerate(rows):
        flags = refusal_flags[i] if refusal_flags is not None else row.get("refused") or [False] * len(row["greedy_answers"])
        if len(flags) != len(row["greedy_answers"]):
            raise ValueError(f"fact '{row['id']}': {len(flags)} refusal flags for {len(row['greedy_answers'])} answers")
        for answer, is_refusal in zip(row["greedy_answers"], flags):
            if is_refusal:
                refused += 1
            else:
                counter[normalize(answer)] += 1
    n = sum(counter.values())
    distinct = len(counter)
    freqs = list(counter.values())
    mean = _ratio(n, distinct)
    var = sum((f - mean) ** 2 for f in freqs) / distinct if distinct else None
    entropy = -sum(f / n * math.log(f / n) for f in freqs) if n else None
    if not distinct:
        norm_entropy = None
    elif distinct == 1:
        norm_entropy = 0.0
    else:
        norm_entropy = entropy / math.log(distinct)
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "distinct": distinct,
        "n_answers": n,
        "refusals_excluded": refused,
        "mean_frequency": mean,
        "std_frequency": math.sqrt(var) if var is not None else None,
        "var_frequency": var,
        "entropy": entropy,
        "normalised_entropy": norm_entropy,
        "top": [{"answer": a, "count": c, "share": c / n} for a, c in ranked[:top]],
        "exploded": [{"answer": a, "count": c, "share": c / n} for a, c in ranked if c / n > exploded_share],
        "exploded_share": exploded_share,
        "definition": "over all greedy answers of the evaluation sample (normalised, refusals excluded): number "
                      "of distinct answers, mean/std (population) of how often each distinct answer occurs, "
                      "entropy of the answer distribution divided by ln(distinct) (0 if only one answer), the "
                      f"most frequent answers, and 'exploded' answers holding more than {exploded_share:.2%} of all "
                      "(the knowledge-packing paper's cut: more than 850 of its 210,360 answers, about 0.4%)",
        "denominator": n,
        "denominator_counts": "greedy answers that are not refusals",
    }


def refusal_rate(rows: Sequence[Row]) -> dict[str, Any]:
    """Share of the greedy answers of `rows` flagged as refusals."""
    flags = [bool(x) for r in rows for x in r.get("refused") or ()]
    interval = stats.cluster_share([sum(bool(x) for x in r.get("refused") or ()) for r in rows],
                                   [len(r.get("refused") or ()) for r in rows])
    return {
        "value": _ratio(sum(flags), len(flags)),
        "ci95": interval["ci95"], "ci_method": interval["method"],
        "refused": sum(flags),
        "facts_with_refusal": sum(any(r.get("refused") or ()) for r in rows),
        "definition": "share of greedy answers that match a refusal pattern",
        "denominator": len(flags),
        "denominator_counts": "greedy answers (facts x prompts)",
    }


def refusal_change(before_rows: Sequence[Row], after_rows: Sequence[Row], ids: Sequence[str]) -> dict[str, Any]:
    """Refusal rate on the facts `ids` before and after training, and the change (after - before)."""
    before, after = _index(before_rows, ids, "before-training probe"), _index(after_rows, ids, "after-training probe")
    b, a = refusal_rate(before), refusal_rate(after)
    change = a["value"] - b["value"] if a["value"] is not None and b["value"] is not None else None

    def share(r: Row) -> float:
        flags = r.get("refused") or ()
        return sum(bool(x) for x in flags) / len(flags) if flags else 0.0

    diff = stats.paired_difference([share(r) for r in before], [share(r) for r in after])
    return {
        "before": b["value"], "after": a["value"], "change": change,
        "before_ci95": b["ci95"], "after_ci95": a["ci95"], "change_ci95": diff["ci95"],
        "ci_method": f"{b['ci_method']}; change: {diff['method']} (per-fact refusal shares)",
        "refused_before": b["refused"], "refused_after": a["refused"],
        "facts_with_refusal_before": b["facts_with_refusal"], "facts_with_refusal_after": a["facts_with_refusal"],
        "definition": "share of greedy answers to the evaluation facts' probe prompts that are refusals, before "
                      "and after training; change = after - before (negative: the model refuses less)",
        "denominator": b["denominator"],
        "denominator_counts": "greedy answers (evaluation facts x prompts), the same before and after",
    }


# --- locality ----------------------------------------------------------------------------------


def locality(before_rows: Sequence[Row], after_rows: Sequence[Row], ids: Sequence[str]) -> dict[str, Any]:
    """Share of untrained facts whose greedy answers, on every prompt, are unchanged after normalisation."""
    before = _index(before_rows, ids, "before-training probe")
    after = _index(after_rows, ids, "after-training probe")
    facts_same = prompts_same = n_prompts = 0
    changed: list[str] = []
    for b, a in zip(before, after):
        ba, aa = b["greedy_answers"], a["greedy_answers"]
        if len(ba) != len(aa):
            raise ValueError(f"fact '{b['id']}' has {len(ba)} greedy answers before and {len(aa)} after; "
                             "probe with the same settings before and after training")
        same = [normalize(x) == normalize(y) for x, y in zip(ba, aa)]
        prompts_same += sum(same)
        n_prompts += len(same)
        if all(same):
            facts_same += 1
        else:
            changed.append(b["id"])
    interval = stats.wilson(facts_same, len(ids))
    return {
        "value": _ratio(facts_same, len(ids)),
        "ci95": interval["ci95"], "ci_method": interval["method"],
        "unchanged_facts": facts_same,
        "per_prompt": _ratio(prompts_same, n_prompts),
        "per_prompt_denominator": n_prompts,
        "changed_ids": changed,
        "definition": "share of untrained evaluation facts whose greedy answers to all probe prompts are the same "
                      "before and after training (compared after normalisation); per_prompt = the same over "
                      "(fact, prompt) pairs",
        "denominator": len(ids),
        "denominator_counts": "untrained evaluation facts",
    }


# --- benchmarks and capacity -------------------------------------------------------------------


def benchmark_drop(before: float, after: float, *, items_before: Sequence[float] | None = None,
                   items_after: Sequence[float] | None = None) -> dict[str, Any]:
    """Absolute drop (before - after) and relative drop ((before - after) / before; None when before = 0).

    With the per-question outcomes (1 correct, 0 not) of both sides, the accuracies get Wilson
    intervals and the drop a paired bootstrap interval over the questions with McNemar's exact test.
    """
    absolute = before - after
    out: dict[str, Any] = {
        "before": before,
        "after": after,
        "absolute": absolute,
        "relative": absolute / before if before else None,
        "definition": "absolute drop = base accuracy - accuracy after training; relative drop = absolute / base "
                      "accuracy, undefined (null) when the base accuracy is 0; positive numbers mean damage",
        "denominator": 1,
        "denominator_counts": "benchmark (accuracy is over that benchmark's own questions)",
    }
    if items_before is not None and items_after is not None and len(items_before) == len(items_after):
        n = len(items_before)
        diff = stats.paired_difference(items_after, items_before)  # mean(before) - mean(after): the drop
        out.update({"before_ci95": stats.wilson(round(sum(items_before)), n)["ci95"],
                    "after_ci95": stats.wilson(round(sum(items_after)), n)["ci95"],
                    "absolute_ci95": diff["ci95"], "mcnemar_p": diff.get("mcnemar_p"),
                    "questions_lost": diff.get("gained"), "questions_gained": diff.get("lost"),
                    "ci_method": f"accuracies: Wilson over {n} questions; drop: {diff['method']}",
                    "denominator": n, "denominator_counts": "benchmark questions, the same before and after"})
    return out


def harness_drop(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """`benchmark_drop` of one lm-evaluation-harness task, from the stage's `lm_eval:<task>` scores.

    Each side holds `accuracy` (lm-eval's `acc`, or the task's first accuracy-like metric), and
    where lm-eval gives them `metric`, `stderr`, `n` (documents scored) and `num_fewshot`.
    """
    out = benchmark_drop(_accuracy(before), _accuracy(after))
    task = after.get("task") or before.get("task") or "?"
    metric = after.get("metric") or before.get("metric") or "acc"
    shots = after.get("num_fewshot", before.get("num_fewshot"))
    n = after.get("n") if after.get("n") is not None else before.get("n")
    out.update({
        "task": task, "metric": metric, "num_fewshot": shots,
        "stderr_before": before.get("stderr"), "stderr_after": after.get("stderr"),
        "n_questions": n,
        "definition": f"lm-evaluation-harness task '{task}' ({'default' if shots is None else shots}-shot), "
                      f"metric '{metric}' as lm-eval aggregates it (a group such as mmlu: over all its "
                      "subtasks' questions), for the base model and after training; absolute drop = base - after, "
                      "relative drop = absolute / base (null when the base is 0); positive numbers mean damage; "
                      "stderr_* are lm-eval's standard errors",
        "denominator": n,
        "denominator_counts": "documents lm-eval scored for this task (after eval.harness_limit)",
    })
    if before.get("n") is not None and after.get("n") is not None and before["n"] != after["n"]:
        out["n_questions_before"] = before["n"]
    se_b, se_a = before.get("stderr"), after.get("stderr")
    if isinstance(se_b, (int, float)) and isinstance(se_a, (int, float)):
        half = stats.Z95 * math.sqrt(se_b ** 2 + se_a ** 2)
        out.update({"before_ci95": [out["before"] - stats.Z95 * se_b, out["before"] + stats.Z95 * se_b],
                    "after_ci95": [out["after"] - stats.Z95 * se_a, out["after"] + stats.Z95 * se_a],
                    "absolute_ci95": [out["absolute"] - half, out["absolute"] + half],
                    "ci_method": "normal intervals from lm-eval's standard errors; the drop's treats the two sides "
                                 "as independent (lm-eval reports no per-question outcomes here), which is wider "
                                 "than a paired interval"})
    return out


def bits_per_fact(answer_space_size: int) -> float:
    """Information in one fact whose answer is one of `answer_space_size` equally likely values."""
    if answer_space_size < 1:
        raise ValueError(f"answer_space_size must be >= 1, got {answer_space_size}")
    return math.log2(answer_space_size)


def capacity(learned_facts: int, bits_per_fact: float, trainable_params: int) -> dict[str, Any]:
    """Bits stored per trainable parameter, compared with ~2 bits/parameter (Allen-Zhu & Li, 2024)."""
    if trainable_params < 0 or learned_facts < 0:
        raise ValueError("learned_facts and trainable_params must be >= 0")
    total = learned_facts * bits_per_fact
    value = _ratio(total, trainable_params)
    return {
        "value": value,
        "learned_facts": learned_facts,
        "bits_per_fact": bits_per_fact,
        "total_bits": total,
        "trainable_params": trainable_params,
        "reference_bits_per_param": REFERENCE_BITS_PER_PARAM,
        "share_of_reference": value / REFERENCE_BITS_PER_PARAM if value is not None else None,
        "definition": "learned facts x bits per fact (log2 of the answer-space size) / trainable parameters; "
                      "whole models store at most ~2 bits per parameter (Allen-Zhu & Li, Physics of Language "
                      "Models 3.3, 2024)",
        "denominator": trainable_params,
        "denominator_counts": "trainable parameters",
    }


def learned_ids(after_rows: Sequence[Row], trained_ids: Sequence[str],
                before_rows: Sequence[Row] | None = None) -> list[str]:
    """Trained facts with P_greedy >= 0.5 after training that were below 0.5 before (when known)."""
    after = _index(after_rows, trained_ids, "after-training probe")
    before = {r["id"]: r for r in before_rows} if before_rows is not None else {}
    return [r["id"] for r in after if r["p_greedy"] >= LEARNED_THRESHOLD
            and not (r["id"] in before and before[r["id"]]["p_greedy"] >= LEARNED_THRESHOLD)]


# --- everything, for metrics.json --------------------------------------------------------------


def _accuracy(value: float | Mapping[str, Any]) -> float:
    if isinstance(value, Mapping):
        if "accuracy" not in value:
            raise ValueError(f"a benchmark result needs an 'accuracy' field, got keys {sorted(value)}")
        return float(value["accuracy"])
    return float(value)


def _items(value: float | Mapping[str, Any]) -> list[float] | None:
    """Per-question outcomes of a benchmark result (`correct`: 0/1 per question), when it has them."""
    return [float(x) for x in value["correct"]] if isinstance(value, Mapping) and "correct" in value else None


def _is_harness(value: float | Mapping[str, Any]) -> bool:
    return isinstance(value, Mapping) and value.get("kind") == "lm_eval"


def _mean_bits(ids: Sequence[str], fmap: Mapping[str, Fact], size: int | Mapping[str, int]) -> float | None:
    """Mean bits per fact over `ids`; a mapping gives the answer-space size per relation."""
    if not isinstance(size, Mapping):
        return bits_per_fact(size)
    bits = []
    for i in ids:
        rel = fmap[i].relation
        if rel not in size:
            raise ValueError(f"answer_space_size has no entry for relation '{rel}' (fact '{i}')")
        bits.append(bits_per_fact(size[rel]))
    return sum(bits) / len(bits) if bits else 0.0


def compute_metrics(facts: Iterable[Fact] | Mapping[str, Fact], before_rows: Sequence[Row], after_rows: Sequence[Row],
                    trained_ids: Sequence[str], eval_ids: Sequence[str], *,
                    zero_shot_answers: Sequence[str] | None = None,
                    paraphrase_answers: Mapping[str, Sequence[str]] | None = None,
                    paraphrase_fewshot_answers: Mapping[str, Sequence[str]] | None = None,
                    benchmarks_before: Mapping[str, float | Mapping[str, Any]] | None = None,
                    benchmarks_after: Mapping[str, float | Mapping[str, Any]] | None = None,
                    trainable_params: int | None = None,
                    answer_space_size: int | Mapping[str, int] | None = None,
                    match: str = "contains",
                    refusal_patterns: Sequence[str] | None = DEFAULT_REFUSAL_PATTERNS,
                    exploded_share: float = DEFAULT_EXPLODED_SHARE, top: int = 10,
                    control_rows: Sequence[Row] | None = None) -> dict[str, Any]:
    """Every metric of SPEC §6 in one JSON-ready record (see the module docstring and `headline`).

    `before_rows`/`after_rows` are the probes of the base and the trained model and must hold both
    `trained_ids` (reliability) and `eval_ids` (shift, collapse, refusals, locality).
    `zero_shot_answers[i]` answers `trained_ids[i]`; `paraphrase_answers[id]` are the zero-shot
    answers to a trained fact's held-out paraphrases (`paraphrase_fewshot_answers` the few-shot
    ones). Benchmarks map a name to an accuracy or to a result with an `accuracy` field; results
    with `kind` "lm_eval" (lm-evaluation-harness tasks) also carry their metric, stderr, shots and
    documents into the record (`harness_drop`); results with per-question outcomes (`correct`, 0/1
    per question) get paired intervals. `control_rows` (the base model re-probed with another
    sampling seed, holding `eval_ids`) gives the shift its noise floor. Sections whose inputs are not
    given are null.
    """
    fmap = _fact_map(facts)
    trained_ids, eval_ids = list(trained_ids), list(eval_ids)
    rel = reliability(after_rows, trained_ids, rows_before=before_rows)
    zs = (zero_shot_reliability(zero_shot_answers, fmap, trained_ids, match, refusal_patterns=refusal_patterns)
          if zero_shot_answers is not None else None)
    gen: dict[str, Any] = {}
    if paraphrase_answers is not None:
        gen["zero_shot"] = generalisation(paraphrase_answers, fmap, trained_ids, match,
                                          refusal_patterns=refusal_patterns, mode="zero-shot")
    if paraphrase_fewshot_answers is not None:
        gen["few_shot"] = generalisation(paraphrase_fewshot_answers, fmap, trained_ids, match,
                                         refusal_patterns=refusal_patterns, mode="few-shot")
    shift = transition_matrix(before_rows, after_rows, eval_ids, control_rows=control_rows)
    eval_before = _index(before_rows, eval_ids, "before-training probe")
    eval_after = _index(after_rows, eval_ids, "after-training probe")
    col_before = answer_collapse(eval_before, exploded_share=exploded_share, top=top)
    col_after = answer_collapse(eval_after, exploded_share=exploded_share, top=top)
    was_exploded = {e["answer"] for e in col_before["exploded"]}
    refusals = refusal_change(before_rows, after_rows, eval_ids)
    loc = locality(before_rows, after_rows, eval_ids)

    benchmarks: dict[str, Any] = {}
    before_b, after_b = dict(benchmarks_before or {}), dict(benchmarks_after or {})
    for name in sorted(set(before_b) | set(after_b)):
        if name in before_b and name in after_b and _is_harness(before_b[name]) and _is_harness(after_b[name]):
            benchmarks[name] = harness_drop(before_b[name], after_b[name])
        elif name in before_b and name in after_b:
            benchmarks[name] = benchmark_drop(_accuracy(before_b[name]), _accuracy(after_b[name]),
                                              items_before=_items(before_b[name]), items_after=_items(after_b[name]))
            sized = [r["n"] for r in (after_b[name], before_b[name]) if isinstance(r, Mapping) and "n" in r]
            if sized:
                benchmarks[name]["n_questions"] = sized[0]
        else:
            benchmarks[name] = {"missing": "before" if name not in before_b else "after",
                                "definition": "benchmark scored on only one side; no drop computed"}

    learned = learned_ids(after_rows, trained_ids, before_rows)
    cap = None
    if trainable_params is not None and answer_space_size is not None:
        cap = capacity(len(learned), _mean_bits(learned, fmap, answer_space_size) or 0.0, trainable_params)
    elif trainable_params is not None:
        cap = {"value": None, "learned_facts": len(learned), "trainable_params": trainable_params,
               "definition": "not computed: the answer-space size (bits per fact) is not known",
               "denominator": trainable_params, "denominator_counts": "trainable parameters"}

    drops_rel = [b["relative"] for b in benchmarks.values() if b.get("relative") is not None]
    floor = shift.get("noise_floor") or {}
    headline = {
        "n_trained": len(trained_ids),
        "n_eval": len(eval_ids),
        "reliability": rel["value"],
        "reliability_ge_half": rel["share_p_greedy_ge_half"],
        "reliability_zero_shot": zs["value"] if zs else None,
        "generalisation_zero_shot": gen["zero_shot"]["value"] if "zero_shot" in gen else None,
        "generalisation_few_shot": gen["few_shot"]["value"] if "few_shot" in gen else None,
        "positive_shift": shift["positive_shift"],
        "negative_shift": shift["negative_shift"],
        "positive_shift_floor": floor.get("positive_shift"),
        "negative_shift_floor": floor.get("negative_shift"),
        "locality": loc["value"],
        "refusal_before": refusals["before"],
        "refusal_after": refusals["after"],
        "distinct_answers_before": col_before["distinct"],
        "distinct_answers_after": col_after["distinct"],
        "normalised_entropy_before": col_before["normalised_entropy"],
        "normalised_entropy_after": col_after["normalised_entropy"],
        "exploded_after": len(col_after["exploded"]),
        "benchmark_drop": {k: v["absolute"] for k, v in benchmarks.items() if "absolute" in v},
        "benchmark_drop_relative": {k: v["relative"] for k, v in benchmarks.items() if "absolute" in v},
        "mean_benchmark_drop_relative": sum(drops_rel) / len(drops_rel) if drops_rel else None,
        "max_benchmark_drop_relative": max(drops_rel) if drops_rel else None,
        "learned_facts": len(learned),
        "bits_per_param": cap["value"] if cap else None,
    }
    headline["ci95"] = {
        "reliability": rel["ci95"], "reliability_ge_half": rel["share_p_greedy_ge_half_ci95"],
        "reliability_zero_shot": zs["ci95"] if zs else None,
        "generalisation_zero_shot": gen["zero_shot"]["ci95"] if "zero_shot" in gen else None,
        "generalisation_few_shot": gen["few_shot"]["ci95"] if "few_shot" in gen else None,
        "positive_shift": shift["positive_shift_ci95"], "negative_shift": shift["negative_shift_ci95"],
        "positive_shift_floor": floor.get("positive_shift_ci95"),
        "negative_shift_floor": floor.get("negative_shift_ci95"),
        "excess_negative_shift": shift.get("excess_negative_shift_ci95"),
        "locality": loc["ci95"], "refusal_before": refusals["before_ci95"], "refusal_after": refusals["after_ci95"],
        "benchmark_drop": {k: v.get("absolute_ci95") for k, v in benchmarks.items() if "absolute" in v},
    }
    headline["ci_definition"] = ("95% intervals: Wilson for shares of facts or questions, a bootstrap over facts for "
                                 "shares of answers and mean P_greedy, a paired bootstrap over questions for "
                                 "benchmark drops (see each section's ci_method)")
    return {
        "schema": SCHEMA,
        "settings": {"match": match, "exploded_share": exploded_share, "top": top,
                     "learned_threshold": LEARNED_THRESHOLD, "refusal_patterns": list(refusal_patterns or ())},
        "headline": headline,
        "reliability": {"few_shot": rel, "zero_shot": zs},
        "generalisation": gen or None,
        "knowledge_shift": shift,
        "answer_collapse": {"before": col_before, "after": col_after,
                            "newly_exploded": [e for e in col_after["exploded"] if e["answer"] not in was_exploded]},
        "refusals": refusals,
        "locality": loc,
        "benchmarks": benchmarks or None,
        "capacity": cap,
    }
