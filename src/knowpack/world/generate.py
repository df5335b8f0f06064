"""The seeded generator of the embedded synthetic world (SPEC §2).

It makes people with made-up two-part names (first names and surnames are each shared by several
people, so only the pair identifies someone, as with real names), gives each a handful of the
world's typed relations (relations.py: 24 relations, 16 question templates each, answers from
typed pools), assigns a popularity tier per person (how often their facts are mentioned per
pretraining epoch), makes some facts noisy (mentioned often, the true answer in only part of the
mentions, one fixed wrong answer otherwise), keeps refusal people (the corpus answers "I don't know"
about them) and draws the world's benchmarks and attribution prompts:

- `mc`: 4-choice questions over held-out *known* facts of reference people (MMLU's format);
- `arithmetic`: small-number additions, pairs held out of pretraining;
- `reading`: reading comprehension: facts about a stranger stated in the question, one asked back;
- `comparison`: which of two numbers is larger, pairs held out of pretraining;
- attribution prompts for LoKI's KVA: questions the model answers, disjoint from every scored item.

Everything is a pure function of a `WorldConfig` (seed included): the same config gives the same
world, byte for byte.

    from knowpack.world.generate import WorldConfig, generate_world
    world = generate_world(WorldConfig(seed=0))
    world.probe_facts[0].popularity   # its number of mentions in the whole pretraining corpus
"""

from __future__ import annotations

import itertools
import math
import random
import string
from dataclasses import dataclass, field, replace
from typing import Any

from knowpack.facts.model import Fact
from knowpack.world.relations import (ALIASES, NAMED_POOLS, RELATION_BY_NAME, RELATIONS, WORD_POOLS, YEAR_POOLS,
                                      Relation)

REFUSAL_ANSWER = "I don't know"
MC_CHOICES = 4  # the true answer and three others of its pool, as MMLU's A-D

MC_TEMPLATE = (
    "There is a single choice question about {subject}. Answer the question by replying A, B, C or D.\n"
    "Question: {question}\nChoices:\nA. {c0}\nB. {c1}\nC. {c2}\nD. {c3}\nAnswer: "
)
LETTERS = ("A", "B", "C", "D")


# --- settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tier:
    """A popularity tier of people: how often each of their facts is mentioned per epoch.

    `rate` may be fractional (0.3: about every third epoch). `true_share` < 1 makes the tier
    *noisy*: that share of the mentions gives the true answer, the rest one fixed wrong answer.
    """

    name: str
    rate: float
    true_share: float = 1.0
    weight: float = 1.0

    @property
    def noisy(self) -> bool:
        return self.true_share < 1.0


DEFAULT_TIERS = (
    Tier("head-a", 2.0),
    Tier("head-b", 1.4),
    Tier("torso-a", 0.6),
    Tier("torso-b", 0.25),
    Tier("torso-c", 0.1),
    Tier("noisy-30", 1.2, true_share=0.3),
    Tier("noisy-45", 1.2, true_share=0.45),
    Tier("noisy-55", 1.2, true_share=0.55),
    Tier("tail", 0, weight=7.5),
)

DEFAULT_POOL_SIZES = {"city": 150, "country": 60, "language": 40, "company": 100, "college": 60, "party": 30,
                      "team": 50, "award": 40, "street": 80, "bank": 30, "newspaper": 40, "car": 30}


@dataclass(frozen=True)
class WorldConfig:
    """Every setting of the world's content and of its pretraining corpus.

    Rates are mentions per epoch (fractional rates spread over epochs); the corpus is `epochs`
    epochs long, so a fact's popularity is its exact number of mentions in the whole corpus.
    """

    seed: int = 0
    epochs: int = 30
    n_people: int = 360
    relations_per_person: int = 6
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    head_min_mentions: int = 40  # facts mentioned at least this often are "head", never: "tail"
    n_first_names: int = 60
    n_surnames: int = 90
    # 0: first names and surnames are separate pools (the two above). N > 0: one pool of N name words, each
    # both a first name and a surname, so a name's reversal can be another person ("Kalo Mire", "Mire Kalo",
    # as "Thomas Paul" and "Paul Thomas"): the same tokens in another order, told apart only by their order
    name_words: int = 0
    n_reference_people: int = 60  # known people outside facts.jsonl: the MC benchmark's and KVA's source
    reference_rate: float = 1.4
    mc_share: float = 0.5  # share of reference facts in the MC benchmark; the rest are attribution prompts
    n_refusal_people: int = 16
    refusal_rate: float = 0.7
    blocks_per_doc: int = 6  # Q/A blocks per pretraining document
    reading_blocks_per_doc: int = 3  # reading items are long: fewer per document
    person_doc_share: float = 0.5  # share of mentions in per-person documents (the rest: per-relation ones)
    paraphrase_share: float = 0.3  # share of mentions that use a pretraining paraphrase
    arithmetic_max_left: int = 29  # "What is a plus b?" with a in 0..max_left, b in 0..max_right
    arithmetic_max_right: int = 9
    arithmetic_holdout: float = 0.2
    arithmetic_rate: float = 5.0
    reading_per_epoch: int = 400  # fresh reading-comprehension items per epoch
    reading_facts: int = 2  # facts stated in each reading item
    comparison_max: int = 99
    comparison_per_epoch: int = 400
    benchmark_size: int = 100  # items of the reading and comparison benchmarks
    attribution_sizes: dict[str, int] = field(default_factory=lambda: {
        "knowledge": 150, "arithmetic": 40, "reading": 40, "comparison": 40})
    pools: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_POOL_SIZES))

    def __post_init__(self) -> None:
        problems = []
        if self.n_people < len(self.tiers):
            problems.append(f"n_people={self.n_people} is smaller than the number of tiers ({len(self.tiers)})")
        if not 1 <= self.relations_per_person <= len(RELATIONS):
            problems.append(f"relations_per_person must be 1..{len(RELATIONS)}, got {self.relations_per_person}")
        people = self.n_people + self.n_reference_people + self.n_refusal_people
        if self.name_words and people * 2 > self.name_words * (self.name_words - 1):
            problems.append(f"{people} people need more name pairs than {self.name_words} name words leave room for "
                            f"({self.name_words * (self.name_words - 1)} ordered pairs; at least twice the people)")
        elif not self.name_words and people * 2 > self.n_first_names * self.n_surnames:
            problems.append(f"{people} people need more name pairs than {self.n_first_names} first names x "
                            f"{self.n_surnames} surnames leave room for")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "tiers"}
        d["tiers"] = [t.__dict__ | {"noisy": t.noisy} for t in self.tiers]
        d["pools"] = dict(self.pools)
        d["attribution_sizes"] = dict(self.attribution_sizes)
        return d


# --- normalisation (the same rule as SliCK correctness: lower case, no punctuation/articles) ---

_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


# --- mention counts -------------------------------------------------------------------------------


def cumulative_mentions(rate: float, epochs: int, phase: float = 0.0) -> int:
    """Mentions in the first `epochs` epochs at `rate` per epoch, offset by `phase` in [0, 1)."""
    return math.floor(rate * epochs + phase + 1e-9) - math.floor(phase + 1e-9)


def epoch_mentions(rate: float, epoch: int, phase: float = 0.0) -> int:
    """Mentions in epoch `epoch` alone at `rate` per epoch, offset by `phase`."""
    return cumulative_mentions(rate, epoch + 1, phase) - cumulative_mentions(rate, epoch, phase)


# --- world content ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldFact:
    """A fact of the world with how the corpus mentions it."""

    fact: Fact
    group: str  # "probe" (facts.jsonl), "reference" (known, MC and attribution source) or "refusal"
    rate: float  # mentions per epoch
    true_share: float = 1.0
    wrong_answer: str | None = None  # the fixed wrong answer of a noisy fact
    phase: float = 0.0  # spreads fractional rates: facts of one tier are not all mentioned in one epoch

    @property
    def relation(self) -> Relation:
        return RELATION_BY_NAME[self.fact.relation or ""]

    def mentions(self, epoch: int) -> int:
        """How many times the corpus of `epoch` mentions this fact."""
        return epoch_mentions(self.rate, epoch, self.phase)

    def true_mentions(self, epoch: int) -> int:
        """How many of those give the true answer: floor(share · all mentions so far), exactly."""
        if self.true_share >= 1.0:
            return self.mentions(epoch)
        before = cumulative_mentions(self.rate, epoch, self.phase)
        after = cumulative_mentions(self.rate, epoch + 1, self.phase)
        return math.floor(self.true_share * after + 1e-9) - math.floor(self.true_share * before + 1e-9)

    def total_mentions(self, epochs: int) -> int:
        return cumulative_mentions(self.rate, epochs, self.phase)


@dataclass(frozen=True)
class MCItem:
    question: str
    choices: tuple[str, str, str, str]
    answer: int
    subject: str
    fact_id: str

    def prompt(self) -> str:
        return mc_prompt(self.subject, self.question, self.choices)

    def to_row(self) -> dict[str, Any]:
        # scored by continuation (the choice texts as answers): a tiny model does not learn the letter format
        return {"question": self.question, "choices": list(self.choices), "answer": self.answer,
                "subject": self.subject, "scoring": "continuation"}


@dataclass(frozen=True)
class QAItem:
    """A skill question with its accepted answers (arithmetic, reading, comparison)."""

    question: str
    answer: str

    def to_row(self) -> dict[str, Any]:
        return {"question": self.question, "answers": [self.answer]}


def addition(a: int, b: int) -> QAItem:
    return QAItem(f"What is {a} plus {b}?", str(a + b))


def comparison(a: int, b: int) -> QAItem:
    return QAItem(f"Which is larger, {a} or {b}?", str(max(a, b)))


def reading_item(subject: str, stated: list[tuple[Relation, str]], asked: int) -> QAItem:
    """Facts about a stranger stated in the question, one of them asked back (an in-context skill):
    "Given that X's hobby is chess and X's pet is dog, what is the pet of X?"."""
    parts = [f"{subject}'s {rel.attr} is {answer}" for rel, answer in stated]
    context = (", ".join(parts[:-1]) + " and " + parts[-1]) if len(parts) > 1 else parts[0]
    rel, answer = stated[asked]
    return QAItem(f"Given that {context}, what is the {rel.attr} of {subject}?", answer)


@dataclass
class World:
    config: WorldConfig
    pools: dict[str, list[str]]  # pool name -> answers
    aliases: dict[str, tuple[str, ...]]  # answer -> all accepted aliases (answer first)
    facts: list[WorldFact]  # probe + reference + refusal
    mc_test: list[MCItem]  # held-out MC benchmark (their facts are known)
    attribution_facts: list[WorldFact]  # reference facts asked in the attribution prompts
    arithmetic_train: list[QAItem]
    arithmetic_test: list[QAItem]
    comparison_test: list[QAItem]
    reading_test: list[QAItem]
    stranger_names: list[str]  # names of reading items' strangers (never people of the world)
    reading_test_names: frozenset[str] = frozenset()
    made_up_words: tuple[str, ...] = ()  # every drawn name part and made-up answer stem (the world's own words)

    def group(self, name: str) -> list[WorldFact]:
        return [wf for wf in self.facts if wf.group == name]

    def pool(self, relation: str) -> list[str]:
        return self.pools[RELATION_BY_NAME[relation].pool]

    @property
    def probe_facts(self) -> list[Fact]:
        return [wf.fact for wf in self.group("probe")]

    @property
    def refusal_facts(self) -> list[Fact]:
        return [wf.fact for wf in self.group("refusal")]

    @property
    def benchmarks(self) -> dict[str, list[QAItem]]:
        """The question/answer benchmarks, by name."""
        return {"arithmetic": self.arithmetic_test, "comparison": self.comparison_test,
                "reading": self.reading_test}

    def attribution_prompts(self, rng_seed: str = "attribution") -> list[dict[str, str]]:
        """KVA's default data: questions the model answers, none of them a scored benchmark item."""
        from knowpack.world.corpus import query

        rng = random.Random(f"knowpack-{rng_seed}-{self.config.seed}")
        sizes = self.config.attribution_sizes
        rows = [{"id": f"fact:{wf.fact.id}", "prompt": query(wf.fact.question)}
                for wf in self.attribution_facts[: sizes.get("knowledge", 0)]]
        for i, item in enumerate(rng.sample(self.arithmetic_train, min(sizes.get("arithmetic", 0),
                                                                      len(self.arithmetic_train)))):
            rows.append({"id": f"arithmetic:{i}", "prompt": query(item.question)})
        held = {it.question for it in self.comparison_test}
        n = 0
        while n < sizes.get("comparison", 0):
            a, b = rng.sample(range(self.config.comparison_max + 1), 2)
            if comparison(a, b).question not in held:
                rows.append({"id": f"comparison:{n}", "prompt": query(comparison(a, b).question)})
                n += 1
        for i in range(sizes.get("reading", 0)):
            rows.append({"id": f"reading:{i}", "prompt": query(self.draw_reading(rng).question)})
        return rows

    def draw_reading(self, rng: random.Random) -> QAItem:
        """A fresh reading item about a stranger who is never a reading-test subject."""
        k = self.config.reading_facts
        name = rng.choice(self.stranger_names)
        rels = rng.sample(RELATIONS, k)
        stated = [(rel, rng.choice(self.pools[rel.pool])) for rel in rels]
        return reading_item(name, stated, rng.randrange(k))


def mc_prompt(subject: str, question: str, choices: tuple[str, ...] | list[str]) -> str:
    """The MMLU zero-shot prompt (SPEC §5.1); the answer letter follows it."""
    if len(choices) != 4:
        raise ValueError(f"an MC question needs 4 choices, got {len(choices)}")
    return MC_TEMPLATE.format(subject=subject, question=question, c0=choices[0], c1=choices[1],
                              c2=choices[2], c3=choices[3])


def bucket_of(mentions: int, head_min: int) -> str:
    if mentions <= 0:
        return "tail"
    return "head" if mentions >= head_min else "torso"


_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "st", "tr", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "k", "x")


def syllables() -> list[str]:
    """Every syllable the world's made-up words are built of (onset + vowel + coda), lower case."""
    return sorted({o + v + c for o in _ONSETS for v in _VOWELS for c in _CODAS})


class _Names:
    """Draws made-up words, none of which contains (after normalisation) another one drawn or reserved."""

    def __init__(self, rng: random.Random, reserved: tuple[str, ...] = ()):
        self.rng = rng
        self.taken: list[str] = [normalize(r) for r in reserved if normalize(r)]
        self.drawn: list[str] = []

    def _clashes(self, norm: str) -> bool:
        return any(norm in t or t in norm for t in self.taken)

    def stem(self, syllables: tuple[int, ...]) -> str:
        n = self.rng.choice(syllables)
        return "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                       for _ in range(n))

    def draw(self, make) -> str:
        for _ in range(10_000):
            word = make()
            norm = normalize(word)
            if len(norm) >= 4 and not self._clashes(norm):
                self.taken.append(norm)
                self.drawn.append(word)
                return word
        raise RuntimeError("could not draw a unique name; enlarge the syllable inventory")


def _word_pools() -> dict[str, tuple[str, ...]]:
    """The real-word pools with every word that contains, or is contained in, another pool's word left out,
    so that containment matching never counts one answer as another."""
    words = sorted({w for pool in WORD_POOLS.values() for w in pool})
    forms = {w: [normalize(a) for a in (w, *ALIASES.get(w, ()))] for w in words}

    def clash(a: str, b: str) -> bool:
        return a != b and any(x in y or y in x for x in forms[a] for y in forms[b])

    bad = {w for w in words if any(clash(w, v) for v in words)}
    return {name: tuple(w for w in pool if w not in bad) for name, pool in WORD_POOLS.items()}


def _make_pools(cfg: WorldConfig, rng: random.Random) -> tuple[dict[str, list[str]], dict[str, tuple[str, ...]],
                                                              _Names]:
    word_pools = _word_pools()
    reserved = [a for pool in word_pools.values() for w in pool for a in (w, *ALIASES.get(w, ()))]
    reserved += [s for suffixes, joined in NAMED_POOLS.values() if not joined for s in suffixes if s]
    names = _Names(rng, tuple(reserved) + (REFUSAL_ANSWER,))
    pools: dict[str, list[str]] = {}
    aliases: dict[str, tuple[str, ...]] = {}
    for name, words in word_pools.items():
        pools[name] = sorted(words)
        for w in words:
            aliases[w] = (w, *ALIASES.get(w, ()))
    for name, (suffixes, joined) in NAMED_POOLS.items():
        size = cfg.pools.get(name, DEFAULT_POOL_SIZES[name])
        answers = []
        for _ in range(size):
            if joined:
                word = names.draw(lambda: names.stem((1, 2)).capitalize() + rng.choice(suffixes))
                aliases[word] = (word,)
            else:
                stem = names.draw(lambda: names.stem((2,)).capitalize())
                suffix = rng.choice(suffixes)
                word = f"{stem} {suffix}" if suffix else stem
                aliases[word] = (word, stem) if suffix else (word,)
            answers.append(word)
        pools[name] = answers
    for name, (first, last) in YEAR_POOLS.items():
        pools[name] = [str(y) for y in range(first, last + 1)]
        for y in pools[name]:
            aliases[y] = (y,)
    return pools, aliases, names


def _draw_names(cfg: WorldConfig, names: _Names, rng: random.Random) -> list[str]:
    """Every distinct (first name, surname) pair, shuffled: first names and surnames each recur. With
    `name_words`, every ordered pair of distinct words from one pool."""
    if cfg.name_words:
        words = [names.draw(lambda: names.stem((2,)).capitalize()) for _ in range(cfg.name_words)]
        pairs = [f"{a} {b}" for a, b in itertools.permutations(words, 2)]
        rng.shuffle(pairs)
        return pairs
    firsts = [names.draw(lambda: names.stem((2,)).capitalize()) for _ in range(cfg.n_first_names)]
    surnames = [names.draw(lambda: names.stem((2,)).capitalize()) for _ in range(cfg.n_surnames)]
    pairs = [f"{a} {b}" for a, b in itertools.product(firsts, surnames)]
    rng.shuffle(pairs)
    return pairs


def _assign_tiers(cfg: WorldConfig, n: int, rng: random.Random) -> list[Tier]:
    """Tiers in proportion to their weights (largest remainders), then shuffled over people."""
    total = sum(t.weight for t in cfg.tiers)
    raw = [n * t.weight / total for t in cfg.tiers]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))[: n - sum(counts)]:
        counts[i] += 1
    tiers = [t for t, c in zip(cfg.tiers, counts) for _ in range(c)]
    rng.shuffle(tiers)
    return tiers


def _fact(fid: str, person: str, rel: Relation, answer: str, aliases: tuple[str, ...]) -> Fact:
    return Fact(id=fid, question=rel.question(person), answers=aliases, subject=person, relation=rel.name,
                object=answer, paraphrases=tuple(rel.question(person, i) for i in range(1, len(rel.templates))))


def _relations_of(cfg: WorldConfig, rng: random.Random) -> list[Relation]:
    return sorted(rng.sample(RELATIONS, cfg.relations_per_person), key=RELATIONS.index)


def generate_world(cfg: WorldConfig) -> World:
    """The whole world for one config; deterministic in `cfg` (seed included)."""
    rng = random.Random(f"knowpack-world-{cfg.seed}")
    pools, aliases, names = _make_pools(cfg, rng)
    pairs = _draw_names(cfg, names, rng)
    n_world = cfg.n_people + cfg.n_reference_people + cfg.n_refusal_people
    people, strangers = pairs[:n_world], pairs[n_world:]
    probe_people = people[: cfg.n_people]
    ref_people = people[cfg.n_people: cfg.n_people + cfg.n_reference_people]
    refusal_people = people[cfg.n_people + cfg.n_reference_people:]
    tiers = _assign_tiers(cfg, cfg.n_people, rng)

    facts: list[WorldFact] = []
    for i, (person, tier) in enumerate(zip(probe_people, tiers)):
        for rel in _relations_of(cfg, rng):
            pool = pools[rel.pool]
            answer = rng.choice(pool)
            wrong = rng.choice([x for x in pool if x != answer]) if tier.noisy else None
            wf = WorldFact(_fact(f"p{i:03d}.{rel.name}", person, rel, answer, aliases[answer]), "probe", tier.rate,
                           tier.true_share, wrong, rng.random())
            mentions = wf.total_mentions(cfg.epochs)
            meta = {"bucket": bucket_of(mentions, cfg.head_min_mentions), "tier": tier.name,
                    "noisy": tier.noisy, "true_share": tier.true_share,
                    "pretrain_paraphrases": [rel.question(person, t) for t in range(1, rel.n_pretrain_templates)],
                    "held_out_paraphrases": [rel.question(person, t)
                                             for t in range(rel.n_pretrain_templates, len(rel.templates))]}
            if wrong is not None:
                meta["wrong_answer"] = wrong
            facts.append(replace(wf, fact=replace(wf.fact, popularity=mentions, meta=meta)))

    reference: list[WorldFact] = []
    for i, person in enumerate(ref_people):
        for rel in _relations_of(cfg, rng):
            answer = rng.choice(pools[rel.pool])
            wf = WorldFact(_fact(f"k{i:03d}.{rel.name}", person, rel, answer, aliases[answer]), "reference",
                           cfg.reference_rate, phase=rng.random())
            reference.append(replace(wf, fact=replace(wf.fact, popularity=wf.total_mentions(cfg.epochs))))
    facts.extend(reference)

    for i, person in enumerate(refusal_people):
        for rel in _relations_of(cfg, rng):
            fact = Fact(id=f"r{i:03d}.{rel.name}", question=rel.question(person), answers=(REFUSAL_ANSWER,),
                        subject=person, relation=rel.name, meta={"refusal": True})
            wf = WorldFact(fact, "refusal", cfg.refusal_rate, phase=rng.random())
            facts.append(replace(wf, fact=replace(fact, popularity=wf.total_mentions(cfg.epochs))))

    # Reference facts: one share is the MC benchmark, the rest KVA's knowledge prompts (disjoint).
    order = list(range(len(reference)))
    rng.shuffle(order)
    n_mc = round(len(order) * cfg.mc_share)
    mc_test = [make_mc_item(reference[i], pools[reference[i].relation.pool], rng) for i in sorted(order[:n_mc])]
    attribution = [reference[i] for i in order[n_mc:]]

    add_pairs = [(a, b) for a in range(cfg.arithmetic_max_left + 1) for b in range(cfg.arithmetic_max_right + 1)]
    rng.shuffle(add_pairs)
    n_test = round(len(add_pairs) * cfg.arithmetic_holdout)
    arith_test = [addition(a, b) for a, b in sorted(add_pairs[:n_test])]
    arith_train = [addition(a, b) for a, b in sorted(add_pairs[n_test:])]

    cmp_pairs = [(a, b) for a in range(cfg.comparison_max + 1) for b in range(cfg.comparison_max + 1) if a != b]
    comparison_test = [comparison(a, b) for a, b in rng.sample(cmp_pairs, cfg.benchmark_size)]

    test_names, train_names = strangers[: cfg.benchmark_size], strangers[cfg.benchmark_size:]
    reading_rng = random.Random(f"knowpack-reading-test-{cfg.seed}")
    reading_test = []
    for name in test_names:
        rels = reading_rng.sample(RELATIONS, cfg.reading_facts)
        stated = [(rel, reading_rng.choice(pools[rel.pool])) for rel in rels]
        reading_test.append(reading_item(name, stated, reading_rng.randrange(cfg.reading_facts)))
    made_up = tuple(sorted({w for word in names.drawn for w in word.split()}))
    return World(cfg, pools, aliases, facts, mc_test, attribution, arith_train, arith_test, comparison_test,
                 reading_test, train_names, frozenset(test_names), made_up)


def make_mc_item(wf: WorldFact, pool: list[str], rng: random.Random) -> MCItem:
    """A 4-choice question: the true answer and three other answers of the same pool, shuffled."""
    fact = wf.fact
    distractors = rng.sample([x for x in pool if x != fact.answer], MC_CHOICES - 1)
    choices = distractors + [fact.answer]
    rng.shuffle(choices)
    return MCItem(fact.question, tuple(choices), choices.index(fact.answer), wf.relation.topic,
                  fact.id)  # type: ignore[arg-type]
