"""Fact and FactSet: one question with one true answer, and an ordered, id-indexed collection."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator


@dataclass(frozen=True)
class Fact:
    """One question with one true answer (SPEC §1).

    `answers[0]` is the answer trained on; every entry is an accepted alias.
    """

    id: str
    question: str
    answers: tuple[str, ...]
    subject: str | None = None
    relation: str | None = None
    object: str | None = None
    paraphrases: tuple[str, ...] = ()
    popularity: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def answer(self) -> str:
        return self.answers[0]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "question": self.question, "answers": list(self.answers)}
        for key in ("subject", "relation", "object", "popularity"):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        if self.paraphrases:
            d["paraphrases"] = list(self.paraphrases)
        if self.meta:
            d["meta"] = self.meta
        return d

    def split_paraphrases(self, held_out_share: float = 0.5, seed: int = 0) -> tuple[list[str], list[str]]:
        """Deterministic split into (train, held-out) paraphrases.

        Each paraphrase is placed by a hash of (seed, fact id, paraphrase), so the split of one
        fact does not depend on which other facts are loaded. At least one paraphrase is held out
        whenever the fact has any.
        """
        if not self.paraphrases:
            return [], []

        def key(p: str) -> str:
            return hashlib.sha256(f"{seed}\x00{self.id}\x00{p}".encode()).hexdigest()

        ordered = sorted(self.paraphrases, key=key)
        n_held = max(1, round(len(ordered) * held_out_share))
        held = set(ordered[:n_held])
        return ([p for p in self.paraphrases if p not in held], [p for p in self.paraphrases if p in held])


class FactSet:
    """An ordered collection of facts with unique ids."""

    def __init__(self, facts: Iterable[Fact], source: str | None = None, format: str | None = None):
        self.facts: list[Fact] = list(facts)
        self.source = source
        #: the input format the facts were read from (None when built in code)
        self.format = format
        self._by_id = {f.id: f for f in self.facts}
        if len(self._by_id) != len(self.facts):
            seen: set[str] = set()
            dup = next(f.id for f in self.facts if f.id in seen or seen.add(f.id))
            raise ValueError(f"duplicate fact id '{dup}'")

    def __len__(self) -> int:
        return len(self.facts)

    def __iter__(self) -> Iterator[Fact]:
        return iter(self.facts)

    def __getitem__(self, key: int | str) -> Fact:
        if isinstance(key, str):
            return self._by_id[key]
        return self.facts[key]

    def __contains__(self, fact_id: object) -> bool:
        return fact_id in self._by_id

    def ids(self) -> list[str]:
        return [f.id for f in self.facts]

    def subset(self, ids: Iterable[str]) -> "FactSet":
        return FactSet([self._by_id[i] for i in ids], source=self.source, format=self.format)

    def sample(self, n: int, seed: int) -> "FactSet":
        """A seeded random sample of n facts (all of them if n >= len), in file order."""
        if n >= len(self.facts):
            return FactSet(self.facts, source=self.source, format=self.format)
        picked = set(random.Random(seed).sample(range(len(self.facts)), n))
        return FactSet([f for i, f in enumerate(self.facts) if i in picked], source=self.source, format=self.format)

    def relations(self) -> list[str]:
        return sorted({f.relation for f in self.facts if f.relation})

    def fingerprint(self) -> str:
        """A content hash: two fact sets with equal fingerprints hold the same facts in the same order."""
        h = hashlib.sha256()
        for f in self.facts:
            h.update(repr(sorted(f.to_dict().items(), key=lambda kv: kv[0])).encode())
        return h.hexdigest()[:16]
