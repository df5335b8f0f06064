"""A summary of a fact set, for ``knowpack facts check FILE``: counts, relations, coverage of fields.

``summarize`` returns plain JSON-serialisable data; ``format_summary`` renders it as aligned text.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from knowpack.facts.model import FactSet

__all__ = ["summarize", "format_summary"]


def _share(n: int, total: int) -> float:
    return round(n / total, 4) if total else 0.0


def _stats(values: list[int]) -> dict[str, float | int]:
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "mean": round(statistics.fmean(values), 3),
            "max": max(values)}


def summarize(factset: FactSet, *, format: str | None = None, top_relations: int = 20) -> dict[str, Any]:
    """Counts and shares describing `factset`; `format` defaults to the one the loader recorded."""
    facts = list(factset)
    n = len(facts)
    relations = Counter(f.relation for f in facts if f.relation)
    questions = Counter(f.question.strip().lower() for f in facts)
    popularity = [f.popularity for f in facts if f.popularity is not None]
    leaks = sum(1 for f in facts if any(a.strip().lower() in f.question.lower() for a in f.answers))
    return {
        "source": factset.source,
        "format": format or factset.format,
        "count": n,
        "fingerprint": factset.fingerprint(),
        "relations": dict(relations.most_common(top_relations)),
        "n_relations": len(relations),
        "without_relation": n - sum(relations.values()),
        "with_triple": _share(sum(1 for f in facts if f.subject and f.relation and f.object), n),
        "with_paraphrases": _share(sum(1 for f in facts if f.paraphrases), n),
        "paraphrases_per_fact": _stats([len(f.paraphrases) for f in facts]),
        "answers_per_fact": _stats([len(f.answers) for f in facts]),
        "popularity_present": _share(len(popularity), n),
        "popularity": _stats(popularity),
        "duplicate_questions": sum(c - 1 for c in questions.values() if c > 1),
        "answer_in_question": leaks,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable text of a ``summarize`` result (the CLI prints it)."""
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict):
            if not value:
                lines.append(f"{key:22} -")
                continue
            lines.append(f"{key}:")
            lines.extend(f"  {str(k):20} {v}" for k, v in value.items())
        else:
            lines.append(f"{key:22} {'-' if value is None else value}")
    return "\n".join(lines)
