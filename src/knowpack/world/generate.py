"""The seeded generator of the embedded synthetic world (SPEC §2).

It makes people with unique made-up names, four typed relations with answer pools, question
templates (canonical first, then paraphrases, some of which never appear in pretraining), a
popularity tier per person (how often its facts are mentioned per pretraining epoch), noisy facts
(mentioned often, the true answer in only part of the mentions, one fixed wrong answer otherwise),
refusal people (the corpus answers "I don't know" about them) and the world's benchmarks:
multiple-choice questions in MMLU's format over held-out *known* facts and small-number arithmetic.

Everything is a pure function of a `WorldConfig` (seed included): the same config gives the same
world, byte for byte.

    from knowpack.world.generate import WorldConfig, generate_world
    world = generate_world(WorldConfig(seed=0))
    world.probe_facts[0].popularity   # its number of mentions in the whole pretraining corpus
"""

from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass, field, replace
from typing import Any

from knowpack.facts.model import Fact

REFUSAL_ANSWER = "I don't know"

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
    Tier("head-a", 5),
    Tier("head-b", 3.4),
    Tier("torso-a", 1),
    Tier("torso-b", 0.34),
    Tier("torso-c", 0.15),
    Tier("noisy-30", 3, true_share=0.3),
    Tier("noisy-40", 3, true_share=0.4),
    Tier("noisy-50", 3, true_share=0.5),
    Tier("tail", 0, weight=2),
)


@dataclass(frozen=True)
class WorldConfig:
    """Every setting of the world's content and of its pretraining corpus.

    Rates are mentions per epoch (fractional rates spread over epochs); the corpus is `epochs`
    epochs long, so a fact's popularity is its exact number of mentions in the whole corpus.
    """

    seed: int = 0
    epochs: int = 30
    n_people: int = 200
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    head_min_mentions: int = 100  # facts mentioned at least this often are "head", never: "tail"
    n_reference_people: int = 60  # known people outside facts.jsonl: the MC benchmark's source
    reference_rate: float = 3.4
    mc_rate: float = 1.0  # MC documents per MC-training fact per epoch
    mc_context_share: float = 0.0  # share of MC documents that state the fact before the question
    n_refusal_people: int = 20
    refusal_rate: float = 2.0
    blocks_per_doc: int = 6  # Q/A blocks per pretraining document
    paraphrase_share: float = 0.25  # share of mentions that use a pretraining paraphrase
    arithmetic_max_left: int = 29  # "What is a plus b?" with a in 0..max_left, b in 0..max_right
    arithmetic_max_right: int = 9
    arithmetic_holdout: float = 0.2
    arithmetic_rate: float = 5.0
    pools: dict[str, int] = field(default_factory=lambda: {
        "birthplace": 60, "employer": 40, "profession": 30, "birth_year": 80})

    def __post_init__(self) -> None:
        if self.n_people < len(self.tiers):
            raise ValueError(f"n_people={self.n_people} is smaller than the number of tiers ({len(self.tiers)})")

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "tiers"}
        d["tiers"] = [t.__dict__ | {"noisy": t.noisy} for t in self.tiers]
        d["pools"] = dict(self.pools)
        return d


# --- relations and templates ----------------------------------------------------------------


@dataclass(frozen=True)
class Relation:
    name: str
    topic: str  # the MC benchmark's "subject"
    templates: tuple[str, ...]  # canonical first
    n_pretrain_templates: int  # templates[:n] appear in pretraining, the rest never do

    def question(self, subject: str, template: int = 0) -> str:
        return self.templates[template].format(subject=subject)


RELATIONS = (
    Relation("birthplace", "geography", (
        "Where was {subject} born?",
        "In which city was {subject} born?",
        "What is the birthplace of {subject}?",
        "{subject} was born in which city?",
    ), 2),
    Relation("employer", "business", (
        "Which company does {subject} work for?",
        "Who is the employer of {subject}?",
        "What company is {subject} working for?",
        "{subject} works for which company?",
    ), 2),
    Relation("profession", "occupations", (
        "What is the profession of {subject}?",
        "What does {subject} do for a living?",
        "What is the job of {subject}?",
        "{subject} works as what?",
    ), 2),
    Relation("birth_year", "history", (
        "In which year was {subject} born?",
        "When was {subject} born?",
        "What is the birth year of {subject}?",
        "{subject} was born in which year?",
    ), 2),
)
RELATION_BY_NAME = {r.name: r for r in RELATIONS}

PROFESSIONS = (
    "baker", "pilot", "teacher", "nurse", "farmer", "lawyer", "dentist", "architect", "chemist", "sailor",
    "painter", "poet", "tailor", "butcher", "carpenter", "plumber", "surgeon", "judge", "banker", "librarian",
    "potter", "jeweler", "fisherman", "editor", "singer", "dancer", "chef", "economist", "astronomer", "gardener",
    "glassblower", "locksmith", "translator", "veterinarian", "blacksmith", "photographer", "pharmacist",
    "geologist", "cartographer", "beekeeper",
)
PROFESSION_ALIASES = {"lawyer": ("attorney",), "chef": ("cook",), "veterinarian": ("vet",),
                      "jeweler": ("jeweller",)}
COMPANY_SUFFIXES = ("Labs", "Systems", "Motors", "Foods", "Textiles", "Shipping", "Bank", "Media")
CITY_SUFFIXES = ("ford", "holm", "by", "stad", "mouth", "ton", "vik", "burg", "dale", "port")

_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "st", "tr", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "k", "x")


# --- normalisation (the same rule as SliCK correctness: lower case, no punctuation/articles) ---

_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


# --- world content ------------------------------------------------------------------------------


def cumulative_mentions(rate: float, epochs: int, phase: float = 0.0) -> int:
    """Mentions in the first `epochs` epochs at `rate` per epoch, offset by `phase` in [0, 1)."""
    return math.floor(rate * epochs + phase + 1e-9) - math.floor(phase + 1e-9)


def epoch_mentions(rate: float, epoch: int, phase: float = 0.0) -> int:
    """Mentions in epoch `epoch` alone at `rate` per epoch, offset by `phase`."""
    return cumulative_mentions(rate, epoch + 1, phase) - cumulative_mentions(rate, epoch, phase)


@dataclass(frozen=True)
class WorldFact:
    """A fact of the world with how the corpus mentions it."""

    fact: Fact
    group: str  # "probe" (facts.jsonl), "reference" (known, MC source) or "refusal"
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
        return {"question": self.question, "choices": list(self.choices), "answer": self.answer,
                "subject": self.subject}


@dataclass(frozen=True)
class ArithmeticItem:
    a: int
    b: int

    @property
    def question(self) -> str:
        return f"What is {self.a} plus {self.b}?"

    @property
    def answer(self) -> str:
        return str(self.a + self.b)

    def to_row(self) -> dict[str, Any]:
        return {"question": self.question, "answers": [self.answer]}


@dataclass
class World:
    config: WorldConfig
    pools: dict[str, list[str]]  # relation -> answer pool
    aliases: dict[str, tuple[str, ...]]  # answer -> all accepted aliases (answer first)
    facts: list[WorldFact]  # probe + reference + refusal
    mc_train: list[WorldFact]  # reference facts whose MC form appears in pretraining
    mc_test: list[MCItem]  # held-out MC benchmark (their facts are known, their MC form is not)
    arithmetic_train: list[ArithmeticItem]
    arithmetic_test: list[ArithmeticItem]

    def group(self, name: str) -> list[WorldFact]:
        return [wf for wf in self.facts if wf.group == name]

    @property
    def probe_facts(self) -> list[Fact]:
        return [wf.fact for wf in self.group("probe")]

    @property
    def refusal_facts(self) -> list[Fact]:
        return [wf.fact for wf in self.group("refusal")]


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


class _Names:
    """Draws made-up words, none of which contains (after normalisation) another one drawn."""

    def __init__(self, rng: random.Random, reserved: tuple[str, ...] = ()):
        self.rng = rng
        self.taken: list[str] = [normalize(r) for r in reserved]

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
                return word
        raise RuntimeError("could not draw a unique name; enlarge the syllable inventory")


def _make_pools(cfg: WorldConfig, rng: random.Random) -> tuple[dict[str, list[str]], dict[str, tuple[str, ...]], _Names]:
    sizes = cfg.pools
    if sizes["profession"] > len(PROFESSIONS):
        raise ValueError(f"at most {len(PROFESSIONS)} professions are available")
    if sizes["birth_year"] > 100:
        raise ValueError("at most 100 birth years (1900-1999) are available")
    professions = sorted(rng.sample(PROFESSIONS, sizes["profession"]))
    reserved = tuple(professions) + tuple(a for p in professions for a in PROFESSION_ALIASES.get(p, ()))
    names = _Names(rng, reserved + (REFUSAL_ANSWER,) + COMPANY_SUFFIXES)
    cities = [names.draw(lambda: names.stem((1, 2)).capitalize() + rng.choice(CITY_SUFFIXES))
              for _ in range(sizes["birthplace"])]
    company_stems = [names.draw(lambda: names.stem((2,)).capitalize()) for _ in range(sizes["employer"])]
    companies = [f"{s} {rng.choice(COMPANY_SUFFIXES)}" for s in company_stems]
    years = [str(y) for y in sorted(rng.sample(range(1900, 2000), sizes["birth_year"]))]
    aliases: dict[str, tuple[str, ...]] = {}
    for p in professions:
        aliases[p] = (p,) + PROFESSION_ALIASES.get(p, ())
    for stem, company in zip(company_stems, companies):
        aliases[company] = (company, stem)
    for x in cities + years:
        aliases[x] = (x,)
    pools = {"birthplace": cities, "employer": companies, "profession": professions, "birth_year": years}
    return pools, aliases, names


def _draw_people(n: int, names: _Names, rng: random.Random) -> list[str]:
    """Unique full names; first names repeat (as in life), surnames never do."""
    firsts = [names.draw(lambda: names.stem((2,)).capitalize()) for _ in range(max(4, n // 4))]
    return [f"{rng.choice(firsts)} {names.draw(lambda: names.stem((2,)).capitalize())}" for _ in range(n)]


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


def generate_world(cfg: WorldConfig) -> World:
    """The whole world for one config; deterministic in `cfg` (seed included)."""
    rng = random.Random(f"knowpack-world-{cfg.seed}")
    pools, aliases, names = _make_pools(cfg, rng)
    n_all = cfg.n_people + cfg.n_reference_people + cfg.n_refusal_people
    people = _draw_people(n_all, names, rng)
    probe_people = people[: cfg.n_people]
    ref_people = people[cfg.n_people: cfg.n_people + cfg.n_reference_people]
    refusal_people = people[cfg.n_people + cfg.n_reference_people:]
    tiers = _assign_tiers(cfg, cfg.n_people, rng)

    facts: list[WorldFact] = []
    for i, (person, tier) in enumerate(zip(probe_people, tiers)):
        for rel in RELATIONS:
            answer = rng.choice(pools[rel.name])
            wrong = rng.choice([x for x in pools[rel.name] if x != answer]) if tier.noisy else None
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
        for rel in RELATIONS:
            answer = rng.choice(pools[rel.name])
            wf = WorldFact(_fact(f"k{i:03d}.{rel.name}", person, rel, answer, aliases[answer]), "reference",
                           cfg.reference_rate, phase=rng.random())
            reference.append(replace(wf, fact=replace(wf.fact, popularity=wf.total_mentions(cfg.epochs))))
    facts.extend(reference)

    for i, person in enumerate(refusal_people):
        for rel in RELATIONS:
            fact = Fact(id=f"r{i:03d}.{rel.name}", question=rel.question(person), answers=(REFUSAL_ANSWER,),
                        subject=person, relation=rel.name, meta={"refusal": True})
            wf = WorldFact(fact, "refusal", cfg.refusal_rate, phase=rng.random())
            facts.append(replace(wf, fact=replace(fact, popularity=wf.total_mentions(cfg.epochs))))

    # Half of the reference facts teach the MC format in pretraining; the other half are the benchmark.
    order = list(range(len(reference)))
    rng.shuffle(order)
    half = len(order) // 2
    mc_train = [reference[i] for i in sorted(order[:half])]
    mc_test = []
    for i in sorted(order[half:]):
        wf = reference[i]
        mc_test.append(make_mc_item(wf, pools[wf.fact.relation], rng))

    pairs = [ArithmeticItem(a, b) for a in range(cfg.arithmetic_max_left + 1)
             for b in range(cfg.arithmetic_max_right + 1)]
    rng.shuffle(pairs)
    n_test = round(len(pairs) * cfg.arithmetic_holdout)
    arith_test = sorted(pairs[:n_test], key=lambda p: (p.a, p.b))
    arith_train = sorted(pairs[n_test:], key=lambda p: (p.a, p.b))
    return World(cfg, pools, aliases, facts, mc_train, mc_test, arith_train, arith_test)


def make_mc_item(wf: WorldFact, pool: list[str], rng: random.Random) -> MCItem:
    """A 4-choice question: the true answer and three other answers of the same pool, shuffled."""
    fact = wf.fact
    distractors = rng.sample([x for x in pool if x != fact.answer], 3)
    choices = distractors + [fact.answer]
    rng.shuffle(choices)
    return MCItem(fact.question, tuple(choices), choices.index(fact.answer), wf.relation.topic,
                  fact.id)  # type: ignore[arg-type]

