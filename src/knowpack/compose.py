"""Training-set composition (SPEC §4): which facts are injected, mixed with what, in which format.

Given the base model's probe (SliCK categories) the composer picks, all seeded:

1. `n_unknown` facts at random from the Unknown pool (not the first n);
2. an evaluation sample of facts that are *not* trained on (knowledge shift, collapse, locality);
3. per Unknown fact, `k` mixing examples: HighlyKnown or MaybeKnown facts (disjoint from the
   evaluation sample), or train paraphrases of the same fact;
4. a retention set of known facts outside all of the above, for early stopping.

Each training example is the zero-shot probe prompt and its first answer: `prompt + completion` is
exactly the text trained on.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

from knowpack.errors import KnowpackError
from knowpack.facts import Fact, FactSet
from knowpack.probe.prompts import zero_shot_prompt

log = logging.getLogger(__name__)

Mixing = Literal["none", "highly_known", "paraphrase", "maybe_known"]
MIX_CATEGORY = {"highly_known": "HighlyKnown", "maybe_known": "MaybeKnown"}
MIX_KIND = {"highly_known": "known", "maybe_known": "maybe_known", "paraphrase": "paraphrase"}


@dataclass
class ComposeSettings:
    n_unknown: int = field(default=50, metadata={"min": 1, "help": "Unknown facts to inject"})
    mixing: Mixing = field(default="none", metadata={"help": "what each Unknown fact is mixed with"})
    k: int = field(default=0, metadata={"min": 0, "help": "mixing examples per Unknown fact (paper: 0, 1, 10)"})
    eval_size: int = field(default=200, metadata={"min": 0, "help": "untrained facts re-probed for knowledge shift"})
    retention_size: int = field(default=50, metadata={"min": 0, "help": "known facts watched by early stopping"})
    reuse_known: bool = field(default=False, metadata={
        "help": "when fewer than k*n_unknown mixing facts exist, use each available one about equally often "
                "(the same ratio of examples, fewer distinct facts); off: stop with an error"})
    held_out_share: float = field(default=0.5, metadata={"min": 0, "max": 1,
                                                         "help": "share of paraphrases never trained on"})
    seed: int = 0


@dataclass
class Composition:
    """The composed training set and the fact samples that go with it."""

    rows: list[dict[str, Any]]
    unknown_ids: list[str]
    eval_ids: list[str]
    retention_ids: list[str]
    mixed_ids: list[str]
    settings: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for r in self.rows:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        return {"examples": len(self.rows), "by_kind": kinds, "unknown": len(self.unknown_ids),
                "eval": len(self.eval_ids), "retention": len(self.retention_ids), "settings": self.settings}


def example(fact_id: str, question: str, answer: str, kind: str, tokenizer: Any) -> dict[str, Any]:
    prompt = zero_shot_prompt(question, tokenizer)
    return {"id": "", "fact_id": fact_id, "kind": kind, "prompt": prompt.text, "completion": f" {answer}\n",
            "add_special_tokens": prompt.add_special_tokens}


def _pick(rng: random.Random, pool: Sequence[str], n: int) -> list[str]:
    return rng.sample(list(pool), min(n, len(pool)))


def compose(facts: FactSet, probe_rows: Sequence[dict[str, Any]], settings: ComposeSettings,
            tokenizer: Any) -> Composition:
    """Compose the training set from the base model's probe rows (see the module docstring)."""
    category = {r["id"]: r["category"] for r in probe_rows}
    probed = [f.id for f in facts if f.id in category]
    by_cat: dict[str, list[str]] = {}
    for fid in probed:
        by_cat.setdefault(category[fid], []).append(fid)
    unknown_pool = by_cat.get("Unknown", [])
    if len(unknown_pool) < settings.n_unknown:
        raise KnowpackError(f"compose.n_unknown={settings.n_unknown} but the probe found only "
                            f"{len(unknown_pool)} Unknown facts; lower n_unknown or probe more facts")
    rng = random.Random(settings.seed)
    unknown = _pick(rng, unknown_pool, settings.n_unknown)
    taken = set(unknown)
    eval_ids = _pick(rng, [i for i in probed if i not in taken], settings.eval_size)
    taken |= set(eval_ids)

    rows = [example(fid, facts[fid].question, facts[fid].answer, "unknown", tokenizer) for fid in unknown]
    mixed: list[str] = []
    if settings.mixing != "none" and settings.k > 0:
        if settings.mixing == "paraphrase":
            for fid in unknown:
                fact = facts[fid]
                train_para, _ = fact.split_paraphrases(settings.held_out_share, settings.seed)
                if not train_para:
                    raise KnowpackError(f"compose.mixing=paraphrase but fact '{fid}' has no train paraphrases; "
                                        "use facts with paraphrases or another mixing")
                for i in range(settings.k):
                    rows.append(example(fid, train_para[i % len(train_para)], fact.answer, "paraphrase", tokenizer))
        else:
            pool = [i for i in by_cat.get(MIX_CATEGORY[settings.mixing], []) if i not in taken]
            need = settings.k * len(unknown)
            if len(pool) < need and not settings.reuse_known:
                raise KnowpackError(f"compose: mixing {settings.mixing} with k={settings.k} needs {need} "
                                    f"{MIX_CATEGORY[settings.mixing]} facts outside the evaluation sample, "
                                    f"but only {len(pool)} exist; lower k, n_unknown or compose.eval_size, "
                                    "or set compose.reuse_known=true to use each of them more than once")
            if len(pool) < need:
                if settings.mixing == "highly_known":  # keep known facts back for the retention check
                    held = set(_pick(rng, pool, settings.retention_size))
                    pool = [i for i in pool if i not in held]
                if not pool:
                    raise KnowpackError(f"compose: no {MIX_CATEGORY[settings.mixing]} facts left to mix with once "
                                        f"compose.retention_size={settings.retention_size} are kept back for "
                                        "early stopping; lower retention_size or eval_size")
                mixed = _pick(rng, pool, len(pool))
                chosen = [mixed[i % len(mixed)] for i in range(need)]
                log.info("compose: %d %s facts used for %d mixing examples (reuse_known)", len(mixed),
                         MIX_CATEGORY[settings.mixing], need)
            else:
                mixed = chosen = _pick(rng, pool, need)
            taken |= set(mixed)
            rows += [example(fid, facts[fid].question, facts[fid].answer, MIX_KIND[settings.mixing], tokenizer)
                     for fid in chosen]
    known = [i for i in by_cat.get("HighlyKnown", []) if i not in taken]
    retention = _pick(rng, known, settings.retention_size)
    counts: dict[tuple[str, str], int] = {}
    for r in rows:  # ids numbered in composition order, so they are stable for a seed
        n = counts[(r["fact_id"], r["kind"])] = counts.get((r["fact_id"], r["kind"]), 0) + 1
        r["id"] = f"{r['fact_id']}/{r['kind']}/{n}"
    rng.shuffle(rows)
    log.info("composed %d examples: %d unknown facts, mixing %s x%d", len(rows), len(unknown),
             settings.mixing, settings.k)
    return Composition(rows, unknown, eval_ids, retention, mixed, asdict(settings))


def training_text(row: dict[str, Any]) -> str:
    return row["prompt"] + row["completion"]


def facts_of(facts: FactSet, ids: Sequence[str]) -> list[Fact]:
    return [facts[i] for i in ids]
