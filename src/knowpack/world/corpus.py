"""The pretraining corpus of the embedded world: one fresh, seeded set of documents per epoch.

A document is several `Question: …\\nAnswer: …\\n` blocks: the facts of one person (a profile), of
one relation (the shape of a same-relation few-shot probe prompt), or of one skill (additions,
comparisons, reading comprehension). Per epoch every fact is mentioned as often as its tier says,
in its canonical wording or one of the relation's pretraining paraphrases; a noisy fact gives its
true answer in exactly its true share of all mentions so far (rounded down) and its fixed wrong
answer otherwise. Tail facts, held-out templates and every benchmark item never appear.

    docs = epoch_documents(world, epoch=0)
"""

from __future__ import annotations

import random

from knowpack.world.generate import World, WorldFact, comparison, epoch_mentions


def query(question: str) -> str:
    """The zero-shot prompt of a question (the probe's base-model format)."""
    return f"Question: {question}\nAnswer:"


def qa_block(question: str, answer: str) -> str:
    """One zero-shot block: the probe's base-model prompt followed by the answer and a newline."""
    return f"{query(question)} {answer}\n"


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


def _chunk_docs(blocks: list[str], size: int, rng: random.Random, shuffle: bool = True) -> list[str]:
    if shuffle:
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
    by_person: dict[str, list[str]] = {}
    for wf in world.facts:
        if wf.rate <= 0:
            continue
        for block in fact_mentions(wf, epoch, cfg.paraphrase_share, rng):
            if rng.random() < cfg.person_doc_share:
                by_person.setdefault(wf.fact.subject or "", []).append(block)
            else:
                by_relation.setdefault(wf.fact.relation or "", []).append(block)
    docs: list[str] = []
    for relation in sorted(by_relation):
        docs.extend(_chunk_docs(by_relation[relation], cfg.blocks_per_doc, rng))
    for person in sorted(by_person):
        docs.extend(_chunk_docs(by_person[person], cfg.blocks_per_doc, rng))

    arithmetic = [qa_block(item.question, item.answer) for k, item in enumerate(world.arithmetic_train)
                  for _ in range(epoch_mentions(cfg.arithmetic_rate, epoch, _golden_phase(k)))]
    docs.extend(_chunk_docs(arithmetic, cfg.blocks_per_doc, rng))

    held = {frozenset(int(x) for x in item.question[len("Which is larger, "):-1].split(" or "))
            for item in world.comparison_test}
    compare = []
    while len(compare) < cfg.comparison_per_epoch:
        a, b = rng.sample(range(cfg.comparison_max + 1), 2)
        if frozenset((a, b)) not in held:
            item = comparison(a, b)
            compare.append(qa_block(item.question, item.answer))
    docs.extend(_chunk_docs(compare, cfg.blocks_per_doc, rng, shuffle=False))

    reading = [world.draw_reading(rng) for _ in range(cfg.reading_per_epoch)]
    docs.extend(_chunk_docs([qa_block(it.question, it.answer) for it in reading], cfg.reading_blocks_per_doc, rng,
                            shuffle=False))
    rng.shuffle(docs)
    return docs
