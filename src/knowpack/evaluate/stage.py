"""The evaluation stage of a run: measure the base model before training and the adapted model after.

Before training (on the base model): benchmark accuracies and the refusal rate on refusal facts,
cached per model and benchmark file. After training: the few-shot probe of the trained facts and of
the evaluation sample (same prompts as the base probe), zero-shot answers to the trained questions
and to their held-out paraphrases, and the benchmarks again. `compute_metrics` turns them into
`metrics.json`.

Benchmarks: `mc` files are MMLU-format (JSONL, MMLU's own CSVs or a directory of them, TruthfulQA's CSV
as MC1; evaluate/mc.py `load_mc`), scored by letter likelihood or by choice-text continuation
(`mc_scoring`; `auto`: continuation for the world's MC set and TruthfulQA, letter otherwise); `qa` files hold
`question`/`answers` rows answered zero-shot. `auto` means the embedded world's benchmarks when the
model is the world, and none otherwise. `harness` names lm-evaluation-harness tasks (the `eval`
extra, evaluate/harness.py), scored as `lm_eval:<task>` beside the others; off by default, since
it needs lm-eval and the task data on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from knowpack.evaluate import harness
from knowpack.evaluate.metrics import DEFAULT_EXPLODED_SHARE
from knowpack.evaluate.mc import check_scoring, load_mc, score_mc, wants_continuation
from knowpack.facts import Fact, FactSet
from knowpack.io import read_json, read_jsonl, write_json
from knowpack.probe.match import DEFAULT_REFUSAL_PATTERNS, RefusalDetector, matches
from knowpack.probe.slick import answer_zero_shot, probe_facts

log = logging.getLogger(__name__)

#: benchmark names of lm-eval tasks in the scores and in metrics.json
HARNESS_PREFIX = "lm_eval:"
#: the benchmark name of the embedded world's MC set
WORLD_MC = "world_mc"


@dataclass
class EvalSettings:
    mc: list[str] = field(default_factory=lambda: ["auto"], metadata={
        "help": "multiple-choice benchmarks: MMLU-format JSONL, MMLU's CSVs (a file or a directory of them), "
                "TruthfulQA's CSV (MC1); 'auto': the world's MC benchmark for the world model"})
    qa: list[str] = field(default_factory=lambda: ["auto"], metadata={
        "help": "question/answers JSONL benchmarks answered zero-shot; 'auto': the world's skill benchmarks"})
    refusal: str | None = field(default="auto", metadata={
        "help": "facts the base model refuses (JSONL); 'auto': the world's refusal facts; null: skip"})
    mc_scoring: Literal["auto", "letter", "continuation"] = field(default="auto", metadata={
        "help": "letter: likeliest answer letter after the MMLU prompt (lm-eval's mmlu); continuation: likeliest "
                "choice text after 'Question: …\\nAnswer:' (lm-eval's mmlu_continuation style); auto: continuation "
                "for the embedded world's MC benchmark (its tiny model never learnt the letter format) and for "
                "TruthfulQA (lm-eval's truthfulqa_mc1), letter for every other file"})
    paraphrases: bool = field(default=True, metadata={
        "help": "measure generalisation on held-out paraphrases, zero-shot and with the probe's few-shot prompts"})
    noise_floor: bool = field(default=True, metadata={
        "help": "re-probe the base model's evaluation facts with another sampling seed: the shift sampling alone "
                "produces, reported beside every shift"})
    limit: int | None = field(default=None, metadata={"min": 1, "help": "questions per benchmark (seeded sample)"})
    exploded_share: float = field(default=DEFAULT_EXPLODED_SHARE, metadata={
        "min": 0, "max": 1, "help": "an answer holding more than this share of all greedy answers is 'exploded' "
                                    "(the knowledge-packing paper: >850 of 210,360 answers, about 0.4%)"})
    batch_size: int = field(default=32, metadata={"min": 1})
    harness: list[str] = field(default_factory=list, metadata={
        "help": "lm-evaluation-harness tasks, each 'task' or 'task:shots', scored before and after training "
                "(needs knowpack[eval] and the task data cached locally); suggested: "
                f"{', '.join(harness.SUGGESTED_TASKS)}; empty: off"})
    harness_limit: int | None = field(default=None, metadata={
        "min": 1, "help": "documents per lm-eval task (lm-eval's limit; quick looks only, not numbers to report)"})

    def __post_init__(self) -> None:
        problems, names = [], []
        for spec in self.harness:
            try:
                names.append(harness.parse_task(spec)[0])
            except ValueError as exc:
                problems.append(f"harness: {exc}")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            problems.append(f"harness: task listed twice: {', '.join(twice)}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class Benchmarks:
    mc: dict[str, list[dict[str, Any]]]
    qa: dict[str, list[dict[str, Any]]]
    refusal: list[Fact]
    #: lm-eval tasks as (name, shots); shots None = the task's own default
    harness: list[tuple[str, int | None]] = field(default_factory=list)


def _is_world(model: str) -> bool:
    return model == "world"


def resolve_benchmarks(settings: EvalSettings, model: str, world_dir: Path | None) -> Benchmarks:
    import random

    def files(entries: list[str], world_files: list[Path]) -> list[Path]:
        out: list[Path] = []
        for e in entries:
            if e == "auto":
                out += world_files if _is_world(model) and world_dir else []
            else:
                out.append(Path(e))
        return out

    def sample(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if settings.limit and settings.limit < len(rows):
            keep = sorted(random.Random(0).sample(range(len(rows)), settings.limit))
            return [rows[i] for i in keep]
        return rows

    wb = (world_dir / "benchmarks") if world_dir else None
    mc_world = [wb / "mc.jsonl"] if wb and (wb / "mc.jsonl").exists() else []
    qa_world = sorted(p for p in wb.glob("*.jsonl") if p.name != "mc.jsonl") if wb and wb.exists() else []
    mc = {p.stem if p not in mc_world else WORLD_MC: sample(load_mc(p)) for p in files(settings.mc, mc_world)}
    for name, rows in mc.items():  # a scoring the rows cannot take fails here, before any training
        mc_scoring(settings, name, rows)
    qa = {p.stem: sample(_load_qa(p)) for p in files(settings.qa, qa_world)}
    refusal: list[Fact] = []
    if settings.refusal:
        path = (world_dir / "refusal.jsonl" if world_dir else None) if settings.refusal == "auto" else Path(settings.refusal)
        if path is not None and (settings.refusal != "auto" or _is_world(model)) and path.exists():
            from knowpack.facts import load_facts

            refusal = list(load_facts(path, "native"))
    return Benchmarks(mc, qa, refusal, [harness.parse_task(t) for t in settings.harness])


def _load_qa(path: Path) -> list[dict[str, Any]]:
    from knowpack.errors import InputError

    rows = []
    for n, row in enumerate(read_jsonl(path), 1):
        if not isinstance(row.get("question"), str) or not isinstance(row.get("answers"), list) or not row["answers"]:
            raise InputError("expected 'question' (string) and 'answers' (non-empty list)", path=str(path), line=n)
        rows.append(row)
    return rows


def mc_scoring(settings: EvalSettings, name: str, rows: list[dict[str, Any]] | None = None) -> str:
    """How benchmark `name` is scored: the setting, or for `auto` continuation on files whose `rows` ask for
    it (`"scoring": "continuation"`: the world's MC set, TruthfulQA MC1) or have not 4 choices, letter
    otherwise. Letter scoring of rows that need continuation is refused."""
    if settings.mc_scoring != "auto":
        check_scoring(rows or [], settings.mc_scoring, name)
        return settings.mc_scoring
    return "continuation" if wants_continuation(rows or []) else "letter"


def score_benchmarks(model: Any, tok: Any, bench: Benchmarks, settings: EvalSettings, *,
                     refusal_patterns: Sequence[str] = DEFAULT_REFUSAL_PATTERNS) -> dict[str, Any]:
    """Accuracy on every benchmark with its per-question outcomes (`correct`, 0/1, for paired intervals),
    plus the refusal rate on the refusal facts; refusals are detected with `refusal_patterns` (the
    probe's), so one detector decides refusals everywhere in a run."""
    out: dict[str, Any] = {}
    detect = RefusalDetector(refusal_patterns)
    for name, rows in bench.mc.items():
        res = score_mc(model, tok, rows, batch_size=settings.batch_size, scoring=mc_scoring(settings, name, rows))
        out[name] = {"accuracy": res["accuracy"], "n": res["n"], "kind": "mc", "scoring": res["scoring"],
                     "correct": [int(p == r["answer"]) for p, r in zip(res["predictions"], rows)],
                     "definition": res["definition"]}
        if "accuracy_norm" in res:
            out[name]["accuracy_norm"] = res["accuracy_norm"]
    for name, rows in bench.qa.items():
        answers = answer_zero_shot(model, tok, [r["question"] for r in rows], batch_size=settings.batch_size)
        correct = [matches(a, r["answers"], "contains") and not detect(a, r["answers"]) for a, r in zip(answers, rows)]
        out[name] = {"accuracy": sum(correct) / len(rows), "n": len(rows), "kind": "qa",
                     "correct": [int(c) for c in correct],
                     "definition": "share of questions whose zero-shot greedy answer contains an accepted answer "
                                   "(refusals never count)"}
    if bench.refusal:
        answers = answer_zero_shot(model, tok, [f.question for f in bench.refusal], batch_size=settings.batch_size)
        refused = [detect(a) for a in answers]
        out["_refusal_facts"] = {"rate": sum(refused) / len(refused), "n": len(refused),
                                 "refused": [int(x) for x in refused],
                                 "definition": "share of refusal-trained questions the model answers with a refusal "
                                               "(zero-shot, greedy; the probe's refusal patterns)"}
    if bench.harness:
        out.update(score_harness(model, tok, bench.harness, settings))
    return out


def score_harness(model: Any, tok: Any, tasks: list[tuple[str, int | None]], settings: EvalSettings) -> dict[str, Any]:
    """lm-eval's scores of `tasks`, keyed `lm_eval:<task>`, with the accuracy-like metric as `accuracy`."""
    out: dict[str, Any] = {}
    for task, scores in harness.run_harness(model, tok, tasks, batch_size=settings.batch_size,
                                            limit=settings.harness_limit).items():
        metric = harness.primary_metric(scores)
        out[f"{HARNESS_PREFIX}{task}"] = {
            "accuracy": scores[metric], "n": scores["n"], "kind": "lm_eval", "task": task, "metric": metric,
            "stderr": scores.get(f"{metric}_stderr"), "num_fewshot": scores["num_fewshot"],
            "limit": settings.harness_limit, "metrics": scores,
            "definition": f"lm-evaluation-harness task '{task}', metric '{metric}' as lm-eval aggregates it "
                          "(a group such as mmlu: over all its subtasks' questions); denominator = n documents"}
    return out


#: bump when score_benchmarks' output changes, so older cache entries are not read back
BENCH_FORMAT = 2


def cached_benchmarks(model: Any, tok: Any, bench: Benchmarks, settings: EvalSettings, model_id: str,
                      cache_dir: Path, *, refusal_patterns: Sequence[str] = DEFAULT_REFUSAL_PATTERNS) -> dict[str, Any]:
    key: dict[str, Any] = {"format": BENCH_FORMAT, "model": model_id, "mc": bench.mc, "qa": bench.qa,
                           "mc_scoring": {name: mc_scoring(settings, name, rows) for name, rows in bench.mc.items()},
                           "refusal": [f.to_dict() for f in bench.refusal], "refusal_patterns": list(refusal_patterns)}
    if bench.harness:  # only then, so runs without lm-eval keep their cache keys
        key["harness"] = {"tasks": bench.harness, "limit": settings.harness_limit,
                          "lm_eval": _lm_eval_version()}
    blob = json.dumps(key, sort_keys=True)
    path = cache_dir / "bench" / f"{hashlib.sha256(blob.encode()).hexdigest()[:20]}.json"
    if path.exists():
        try:
            return read_json(path)
        except (OSError, ValueError):
            pass
    result = score_benchmarks(model, tok, bench, settings, refusal_patterns=refusal_patterns)
    write_json(path, result)
    return result


def _lm_eval_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        return None


def split_refusal(scores: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    rest = {k: v for k, v in scores.items() if not k.startswith("_")}
    return rest, scores.get("_refusal_facts")


def paraphrase_answers(model: Any, tok: Any, facts: FactSet, ids: list[str], held_out_share: float, seed: int,
                       batch_size: int = 32) -> dict[str, list[str]]:
    """Zero-shot answers to each trained fact's held-out paraphrases (never trained on)."""
    questions: list[tuple[str, str]] = []
    for fid in ids:
        _, held = facts[fid].split_paraphrases(held_out_share, seed)
        questions += [(fid, q) for q in held]
    answers = answer_zero_shot(model, tok, [q for _, q in questions], batch_size=batch_size)
    out: dict[str, list[str]] = {fid: [] for fid in ids if facts[fid].paraphrases}
    for (fid, _), a in zip(questions, answers):
        out[fid].append(a)
    return out


def paraphrase_fewshot_answers(model: Any, tok: Any, facts: FactSet, ids: list[str], held_out_share: float,
                               seed: int, probe_settings: Any) -> dict[str, list[str]]:
    """Greedy few-shot answers to each trained fact's held-out paraphrases: the fact's own probe prompts
    (the same exemplars) with the paraphrase asked instead of the canonical question; one answer per
    (paraphrase, prompt)."""
    from knowpack.probe.engine import HFEngine
    from knowpack.probe.prompts import build_probe_prompts

    asked: list[tuple[str, str]] = []
    for fid in ids:
        _, held = facts[fid].split_paraphrases(held_out_share, seed)
        asked += [(fid, q) for q in held]
    out: dict[str, list[str]] = {fid: [] for fid in ids if facts[fid].paraphrases}
    if not asked:
        return out
    s = probe_settings
    prompts = build_probe_prompts([facts[fid] for fid, _ in asked], tok, n_prompts=s.n_prompts, shots=s.shots,
                                  seed=s.seed, exemplars=facts, chat=s.chat, mode=s.exemplars,
                                  questions=[q for _, q in asked])
    flat = [p for per in prompts for p in per]
    outs = HFEngine(model, tok, batch_size=s.batch_size).generate(flat, greedy=True, n_samples=0,
                                                                  max_new_tokens=s.max_new_tokens)
    for j, (fid, _) in enumerate(asked):
        out[fid] += [o.greedy or "" for o in outs[j * s.n_prompts:(j + 1) * s.n_prompts]]
    return out


def probe_after(model: Any, tok: Any, facts: FactSet, ids: list[str], probe_settings: Any,
                progress: bool = True) -> list[dict[str, Any]]:
    """The few-shot probe of `ids` on the adapted model, with the base probe's prompts."""
    return probe_facts(model, tok, facts.subset(ids), probe_settings, progress=progress, exemplars=facts)
