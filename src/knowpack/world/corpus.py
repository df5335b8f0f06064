"""The pretraining corpus of the embedded world: one fresh, seeded set of documents per epoch.

A document is several `Question: …\\nAnswer: …\\n` blocks of one relation (the shape of a
same-relation few-shot probe prompt), several arithmetic blocks, or one multiple-choice question in
MMLU's format followed by its letter. Per epoch every fact is mentioned as often as its tier says;
a noisy fact gives its true answer in exactly its true share of all mentions so far (rounded down)
and its fixed wrong answer otherwise. Tail facts, held-out templates, held-out arithmetic pairs and
the MC benchmark's items never appear.

    docs = epoch_documents(world, epoch=0)
"""

from __future__ import annotations

import random

from knowpack.world.generate import LETTERS, World, WorldFact, epoch_mentions, make_mc_item


def qa_block(question: str, answer: str) -> str:
    """One zero-shot block: the probe's base-model prompt followed by the answer and a newline."""
    return f"Question: {question}\nAnswer: {answer}\n"


def _golden_phase(k: int) -> float:
    """Well-spread phases for items that have no random phase of their own."""
    return (k * 0.6180339887498949) % 1.0


def fact_mentions(wf: WorldFact, epoch: int, paraphrase_share: float, rng: random.Random) -> list[str]:
    """The blocks that mention one fact in one epoch (canonical template or a pretraining paraphrase)."""
    fact, rel = wf.fact, wf.relation
    n, n_true = wf.mentions(epoch), wf.true_mentions(epoch)
    answers = [fact.answer] * n_true + [wf.wrong_answer or fact.answer] * (n - n_true)
    blocks = []
    for answer in answers:
        template = 0
        if rel.n_pretrain_templates > 1 and rng.random() < paraphrase_share:
            template = rng.randrange(1, rel.n_pretrain_templates)
        blocks.append(qa_block(rel.question(fact.subject or "", template), answer))
    return blocks


def _chunk_docs(blocks: list[str], size: int, rng: random.Random) -> list[str]:
    rng.shuffle(blocks)
    docs = []
    for i in range(0, len(blocks), size):
        # Half the documents put a blank line between blocks, so few-shot prompts joined either way
        # look familiar.
        sep = "\n" if rng.random() < 0.5 else ""
        docs.append(sep.join(blocks[i:i + size]))
    return docs


def epoch_documents(world: World, epoch: int) -> list[str]:
    """All documents of one pretraining epoch, shuffled; a pure function of (world, epoch)."""
    cfg = world.config
    rng = random.Random(f"knowpack-corpus-{cfg.seed}-{epoch}")
    by_relation: dict[str, list[str]] = {}
    for wf in world.facts:
        if wf.rate > 0:
            by_relation.setdefault(wf.fact.relation or "", []).extend(
                fact_mentions(wf, epoch, cfg.paraphrase_share, rng))
    docs: list[str] = []
    for relation in sorted(by_relation):
        docs.extend(_chunk_docs(by_relation[relation], cfg.blocks_per_doc, rng))

    arithmetic = [qa_block(item.question, item.answer) for k, item in enumerate(world.arithmetic_train)
                  for _ in range(epoch_mentions(cfg.arithmetic_rate, epoch, _golden_phase(k)))]
    docs.extend(_chunk_docs(arithmetic, cfg.blocks_per_doc, rng))

    for wf in world.mc_train:
        for _ in range(epoch_mentions(cfg.mc_rate, epoch, wf.phase)):
            item = make_mc_item(wf, world.pools[wf.fact.relation or ""], rng)
            # Some MC documents first state the fact: matching a choice to an answer in context is
            # learnt early and then carries over to answers recalled from the weights.
            lead = qa_block(wf.fact.question, wf.fact.answer) if rng.random() < cfg.mc_context_share else ""
            docs.append(lead + item.prompt() + LETTERS[item.answer] + "\n")
    rng.shuffle(docs)
    return docs
