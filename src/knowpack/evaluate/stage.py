"""The evaluation stage of a run: measure the base model before training and the adapted model after.

Before training (on the base model): benchmark accuracies and the refusal rate on refusal facts,
cached per model and benchmark file. After training: the few-shot probe of the trained facts and of
the evaluation sample (same prompts as the base probe), zero-shot answers to the trained questions
and to their held-out paraphrases, and the benchmarks again. `compute_metrics` turns them into
`metrics.json`.

Benchmarks: `mc` files are MMLU-format and scored by letter likelihood; `qa` files hold
`question`/`answers` rows answered zero-shot. `auto` means the embedded world's benchmarks when the
model is the world, and none otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knowpack.evaluate.mc import load_mc, score_mc
from knowpack.facts import Fact, FactSet
from knowpack.io import read_json, read_jsonl, write_json
from knowpack.probe.match import is_refusal, matches
from knowpack.probe.slick import answer_zero_shot, probe_facts

log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    mc: list[str] = field(default_factory=lambda: ["auto"], metadata={
        "help": "MMLU-format JSONL benchmarks; 'auto': the world's MC benchmark for the world model"})
    qa: list[str] = field(default_factory=lambda: ["auto"], metadata={
        "help": "question/answers JSONL benchmarks answered zero-shot; 'auto': the world's skill benchmarks"})
    refusal: str | None = field(default="auto", metadata={
        "help": "facts the base model refuses (JSONL); 'auto': the world's refusal facts; null: skip"})
    paraphrases: bool = field(default=True, metadata={"help": "measure generalisation on held-out paraphrases"})
    limit: int | None = field(default=None, metadata={"min": 1, "help": "questions per benchmark (seeded sample)"})
    exploded_share: float = field(default=0.05, metadata={"min": 0, "max": 1})
    batch_size: int = field(default=32, metadata={"min": 1})


@dataclass
class Benchmarks:
    mc: dict[str, list[dict[str, Any]]]
    qa: dict[str, list[dict[str, Any]]]
    refusal: list[Fact]


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
    mc = {p.stem if p not in mc_world else "world_mc": sample(load_mc(p)) for p in files(settings.mc, mc_world)}
    qa = {p.stem: sample(_load_qa(p)) for p in files(settings.qa, qa_world)}
    refusal: list[Fact] = []
    if settings.refusal:
        path = (world_dir / "refusal.jsonl" if world_dir else None) if settings.refusal == "auto" else Path(settings.refusal)
        if path is not None and (settings.refusal != "auto" or _is_world(model)) and path.exists():
            from knowpack.facts import load_facts

            refusal = list(load_facts(path, "native"))
    return Benchmarks(mc, qa, refusal)


def _load_qa(path: Path) -> list[dict[str, Any]]:
    from knowpack.errors import InputError

    rows = []
    for n, row in enumerate(read_jsonl(path), 1):
        if not isinstance(row.get("question"), str) or not isinstance(row.get("answers"), list) or not row["answers"]:
            raise InputError("expected 'question' (string) and 'answers' (non-empty list)", path=str(path), line=n)
        rows.append(row)
    return rows


def score_benchmarks(model: Any, tok: Any, bench: Benchmarks, settings: EvalSettings) -> dict[str, Any]:
    """Accuracy on every benchmark, plus the refusal rate on the refusal facts."""
    out: dict[str, Any] = {}
    for name, rows in bench.mc.items():
        res = score_mc(model, tok, rows, batch_size=settings.batch_size)
        out[name] = {"accuracy": res["accuracy"], "n": res["n"], "kind": "mc", "definition": res["definition"]}
    for name, rows in bench.qa.items():
        answers = answer_zero_shot(model, tok, [r["question"] for r in rows], batch_size=settings.batch_size)
        correct = [matches(a, r["answers"], "contains") and not is_refusal(a) for a, r in zip(answers, rows)]
        out[name] = {"accuracy": sum(correct) / len(rows), "n": len(rows), "kind": "qa",
                     "definition": "share of questions whose zero-shot greedy answer contains an accepted answer"}
    if bench.refusal:
        answers = answer_zero_shot(model, tok, [f.question for f in bench.refusal], batch_size=settings.batch_size)
        refused = [is_refusal(a) for a in answers]
        out["_refusal_facts"] = {"rate": sum(refused) / len(refused), "n": len(refused),
                                 "definition": "share of refusal-trained questions the model answers with a refusal "
                                               "(zero-shot, greedy)"}
    return out


def cached_benchmarks(model: Any, tok: Any, bench: Benchmarks, settings: EvalSettings, model_id: str,
                      cache_dir: Path) -> dict[str, Any]:
    blob = json.dumps({"model": model_id, "mc": bench.mc, "qa": bench.qa,
                       "refusal": [f.to_dict() for f in bench.refusal]}, sort_keys=True)
    path = cache_dir / "bench" / f"{hashlib.sha256(blob.encode()).hexdigest()[:20]}.json"
    if path.exists():
        try:
            return read_json(path)
        except (OSError, ValueError):
            pass
    result = score_benchmarks(model, tok, bench, settings)
    write_json(path, result)
    return result


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


def probe_after(model: Any, tok: Any, facts: FactSet, ids: list[str], probe_settings: Any,
                progress: bool = True) -> list[dict[str, Any]]:
    """The few-shot probe of `ids` on the adapted model, with the base probe's prompts."""
    return probe_facts(model, tok, facts.subset(ids), probe_settings, progress=progress, exemplars=facts)
