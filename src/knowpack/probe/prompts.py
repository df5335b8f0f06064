"""Few-shot and zero-shot probe prompts (SPEC §3), built so that few-shot prefixes are shared.

A prompt is a `Prompt(prefix, suffix)`: the *prefix* holds the few-shot exemplars (and, for chat
models, the system turn), the *suffix* the probed question; the engine computes each distinct
prefix's key/value cache once for all the answers drawn from it.

Exemplars are facts of the same relation (Gekhman et al.) when the fact has a relation with at least
`shots + 1` candidate facts; otherwise they come from a seeded pool of all candidate facts. A fact
is never shown its own answer. Two ways to choose them:

- `per_question` (default, as Gekhman et al. draw them): every (fact, prompt) gets its own seeded
  sample, seeded by (seed, fact id, prompt index). Category errors of different facts are then
  independent, and a fact's prompts do not depend on which other facts are probed.
- `shared`: prompt i of relation r uses one exemplar set for every fact of r (seeded by seed,
  relation, prompt index), so those facts share one prefix; a fact that is itself among the
  exemplars gets the same set with a fixed substitute in its slot. Faster to probe, but a bad
  exemplar set affects every fact of the relation at once.

All choices are seeded by strings, so they do not depend on Python's hash randomisation or on the
order of unrelated facts.

Base models get plain blocks::

    Question: {q}\\nAnswer: {a}\\n  ...  Question: {q}\\nAnswer:

Chat models (a tokenizer with a chat template, unless `chat=False`) get the system turn
"Answer the following question.", then one user turn "Question: {q}" and one assistant turn
"Answer: {a}" per exemplar, then the probed question with the generation prompt followed by
"Answer:" as the start of the assistant turn. Prefilling "Answer:" keeps the answer format of the
exemplars and makes the model's first tokens the answer itself, so greedy and sampled answers are
read the same way for base and chat models.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Sequence

from knowpack.facts import Fact, FactSet

log = logging.getLogger(__name__)

SYSTEM_PROMPT = "Answer the following question."
GLOBAL_POOL = "\x00pool"  # exemplar-set key for facts without a usable relation


@dataclass(frozen=True)
class Prompt:
    """One prompt: a prefix shared with other prompts, and the part that is this prompt's own.

    `add_special_tokens` says how to tokenize `text` (False for chat templates, which hold their own
    BOS token).
    """

    prefix: str
    suffix: str
    add_special_tokens: bool = True

    @property
    def text(self) -> str:
        return self.prefix + self.suffix


def uses_chat_template(tokenizer: Any, chat: bool | None = None) -> bool:
    """Whether prompts for this tokenizer use its chat template: `chat` if given, else whether it has one."""
    if chat is not None:
        if chat and not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat=True but the tokenizer has no chat_template")
        return chat
    return bool(getattr(tokenizer, "chat_template", None))


# --- exemplar choice ---------------------------------------------------------------------


def _exemplar_key(fact: Fact, by_relation: dict[str, list[Fact]], shots: int) -> str:
    if fact.relation is not None and len(by_relation.get(fact.relation, ())) >= shots + 1:
        return fact.relation
    return GLOBAL_POOL


EXEMPLAR_MODES = ("per_question", "shared")


def select_exemplars(facts: Sequence[Fact] | FactSet, *, n_prompts: int = 10, shots: int = 4, seed: int = 0,
                     exemplars: Sequence[Fact] | FactSet | None = None,
                     mode: str = "per_question") -> list[list[list[Fact]]]:
    """Exemplars for every (fact, prompt): `result[j][i]` is the list for prompt i of fact j.

    `exemplars` is the candidate pool (default: `facts` themselves). `per_question`: a seeded sample
    of `shots` candidates other than the fact, per (fact, prompt). `shared`: prompt i of a relation
    uses one seeded sample of `shots + 1` candidates, the first `shots` being the exemplars and the
    last the substitute for the probed fact when it is among them. The probed fact never appears.
    """
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    if mode not in EXEMPLAR_MODES:
        raise ValueError(f"unknown exemplar mode '{mode}'; use one of: {', '.join(EXEMPLAR_MODES)}")
    pool = list(exemplars if exemplars is not None else facts)
    by_relation: dict[str, list[Fact]] = {}
    for f in pool:
        if f.relation is not None:
            by_relation.setdefault(f.relation, []).append(f)

    sets: dict[tuple[str, int], tuple[list[Fact], list[Fact]]] = {}

    def exemplar_set(key: str, i: int) -> tuple[list[Fact], list[Fact]]:
        if (key, i) not in sets:
            candidates = pool if key == GLOBAL_POOL else by_relation[key]
            rng = random.Random(f"knowpack-probe|{seed}|{key}|{i}")
            picked = rng.sample(candidates, min(shots + 1, len(candidates))) if shots else []
            sets[key, i] = (picked[:shots], picked[shots:])
        return sets[key, i]

    def own_sample(fact: Fact, key: str, i: int) -> list[Fact]:
        candidates = pool if key == GLOBAL_POOL else by_relation[key]
        rng = random.Random(f"knowpack-probe|{seed}|{fact.id}|{i}")
        picked = rng.sample(candidates, min(shots + 1, len(candidates))) if shots else []
        return [e for e in picked if e.id != fact.id][:shots]

    warned: set[str] = set()
    out: list[list[list[Fact]]] = []
    for fact in facts:
        key = _exemplar_key(fact, by_relation, shots)
        if key == GLOBAL_POOL and fact.relation is not None and fact.relation not in warned:
            warned.add(fact.relation)
            log.info("relation '%s' has fewer than %d facts; its exemplars come from the global pool",
                     fact.relation, shots + 1)
        if mode == "per_question":
            out.append([own_sample(fact, key, i) for i in range(n_prompts)])
            continue
        per_prompt = []
        for i in range(n_prompts):
            chosen, spare = exemplar_set(key, i)
            ids = [e.id for e in chosen]
            if fact.id in ids:
                chosen = list(chosen)
                slot = ids.index(fact.id)
                if spare:
                    chosen[slot] = spare[0]
                else:  # a pool too small to hold a substitute: one shot fewer
                    del chosen[slot]
            per_prompt.append(list(chosen))
        out.append(per_prompt)
    if shots and pool and len(pool) < shots + 1:
        log.warning("only %d exemplar candidates for %d shots; prompts have fewer shots", len(pool), shots)
    return out


# --- rendering -----------------------------------------------------------------------------


def _base_block(question: str, answer: str) -> str:
    return f"Question: {question}\nAnswer: {answer}\n"


def _base_query(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def _chat_messages(pairs: Sequence[tuple[str, str]], question: str, system: bool) -> list[dict[str, str]]:
    msgs: list[dict[str, str]] = [{"role": "system", "content": SYSTEM_PROMPT}] if system else []
    for q, a in pairs:
        msgs.append({"role": "user", "content": f"Question: {q}"})
        msgs.append({"role": "assistant", "content": f"Answer: {a}"})
    msgs.append({"role": "user", "content": f"Question: {question}"})
    if not system:  # templates that reject a system role get the instruction in the first user turn
        msgs[0] = {"role": "user", "content": f"{SYSTEM_PROMPT}\n\n{msgs[0]['content']}"}
    return msgs


def _render_chat(tokenizer: Any, pairs: Sequence[tuple[str, str]], question: str) -> Prompt:
    try:
        msgs = _chat_messages(pairs, question, system=True)
        full = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja raises TemplateError for "system role not supported" and the like
        log.debug("chat template rejected a system turn (%s); folding it into the first user turn", exc)
        msgs = _chat_messages(pairs, question, system=False)
        full = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full += "Answer:"
    prefix = ""
    if len(msgs) > 1:
        try:
            head = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=False)
        except Exception:  # a template that insists on ending with a user turn: no shared prefix
            head = ""
        # Only a true string prefix can be shared; otherwise the whole prompt is this prompt's own.
        if head and full.startswith(head):
            prefix = head
    return Prompt(prefix, full[len(prefix):], add_special_tokens=False)


def render_prompt(tokenizer: Any, pairs: Sequence[tuple[str, str]], question: str, *, chat: bool | None = None) -> Prompt:
    """The prompt for `question` after the exemplar (question, answer) `pairs`."""
    if uses_chat_template(tokenizer, chat):
        return _render_chat(tokenizer, pairs, question)
    return Prompt("".join(_base_block(q, a) for q, a in pairs), _base_query(question))


def build_probe_prompts(facts: Sequence[Fact] | FactSet, tokenizer: Any, *, n_prompts: int = 10, shots: int = 4,
                        seed: int = 0, exemplars: Sequence[Fact] | FactSet | None = None,
                        chat: bool | None = None, mode: str = "per_question",
                        questions: Sequence[str] | None = None) -> list[list[Prompt]]:
    """`n_prompts` few-shot prompts per fact (one list per fact, in order); see the module docstring.

    `questions[j]` asks fact j in another wording (a paraphrase) after the same exemplars; default:
    each fact's own question.
    """
    chosen = select_exemplars(facts, n_prompts=n_prompts, shots=shots, seed=seed, exemplars=exemplars, mode=mode)
    asked = list(questions) if questions is not None else [f.question for f in facts]
    if len(asked) != len(chosen):
        raise ValueError(f"got {len(asked)} questions for {len(chosen)} facts")
    use_chat = uses_chat_template(tokenizer, chat)
    rendered: dict[tuple[tuple[str, ...], str], Prompt] = {}
    out = []
    for question, per_prompt in zip(asked, chosen):
        prompts = []
        for ex in per_prompt:
            key = (tuple(e.id for e in ex), question)
            if key not in rendered:
                rendered[key] = render_prompt(tokenizer, [(e.question, e.answer) for e in ex], question,
                                              chat=use_chat)
            prompts.append(rendered[key])
        out.append(prompts)
    return out


def zero_shot_prompt(question: str, tokenizer: Any, *, chat: bool | None = None) -> Prompt:
    """`Question: {q}\\nAnswer:` (or its chat form, with the system turn as the shared prefix)."""
    return render_prompt(tokenizer, [], question, chat=chat)
