"""Tests of the embedded world: generator, corpus, tokenizer, the shipped default world and a tiny build."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from knowpack.errors import KnowpackError
from knowpack.facts.model import Fact
from knowpack.world import PretrainConfig, WorldConfig, build_world, default_world_dir, generate_world
from knowpack.world.build import greedy_answers
from knowpack.world.corpus import epoch_documents
from knowpack.world.generate import (MC_TEMPLATE, RELATIONS, REFUSAL_ANSWER, Tier, WorldFact, cumulative_mentions,
                                     mc_prompt, normalize, syllables)
from knowpack.world.pretrain import pack_documents, tokenizer_texts, train_tokenizer

SMALL = WorldConfig(seed=5, n_people=40, n_reference_people=12, n_refusal_people=4, arithmetic_max_left=9,
                    arithmetic_max_right=4, n_first_names=12, n_surnames=12, reading_per_epoch=20,
                    comparison_per_epoch=20, benchmark_size=10,
                    attribution_sizes={"knowledge": 10, "arithmetic": 4, "reading": 4, "comparison": 4},
                    tiers=(Tier("head", 4), Tier("torso", 1), Tier("tail", 0), Tier("noisy", 3, true_share=0.3)),
                    head_min_mentions=4, epochs=2)
TINY_PRETRAIN = PretrainConfig(vocab_size=300, hidden_size=32, layers=2, intermediate_size=64, heads=2, batch_size=16,
                               seq_len=128, threads=1)


@pytest.fixture(scope="module")
def world():
    return generate_world(SMALL)


@pytest.fixture(scope="module")
def default_world():
    return generate_world(WorldConfig())


# --- generator ------------------------------------------------------------------------------


def test_same_seed_same_world_other_seed_other_world():
    a, b = generate_world(SMALL), generate_world(SMALL)
    assert [wf.fact.to_dict() for wf in a.facts] == [wf.fact.to_dict() for wf in b.facts]
    assert [i.to_row() for i in a.mc_test] == [i.to_row() for i in b.mc_test]
    assert epoch_documents(a, 1) == epoch_documents(b, 1)
    c = generate_world(replace(SMALL, seed=6))
    assert [wf.fact.subject for wf in c.facts] != [wf.fact.subject for wf in a.facts]


def test_ids_and_names_unique_one_object_per_subject_relation(default_world):
    facts = [wf.fact for wf in default_world.facts]
    assert len({f.id for f in facts}) == len(facts)
    pairs = Counter((f.subject, f.relation) for f in facts)
    assert max(pairs.values()) == 1
    people = {f.subject for f in facts}
    cfg = default_world.config
    assert len(people) == cfg.n_people + cfg.n_reference_people + cfg.n_refusal_people
    assert {f.relation for f in facts} == {r.name for r in RELATIONS} and len(RELATIONS) >= 20
    per_person = Counter(f.subject for f in facts)
    assert set(per_person.values()) == {cfg.relations_per_person}
    for f in default_world.probe_facts:
        assert f.object == f.answers[0] and f.answers[0] in default_world.pool(f.relation)
        assert f.question == RELATIONS[[r.name for r in RELATIONS].index(f.relation)].question(f.subject)
        assert len(f.paraphrases) == 15 and f.question not in f.paraphrases and len(set(f.paraphrases)) == 15
    # names: two parts, each shared by several people, the pair unique
    firsts = Counter(p.split()[0] for p in people)
    surnames = Counter(p.split()[1] for p in people)
    assert max(firsts.values()) > 1 and max(surnames.values()) > 1


def test_one_pool_of_name_words_makes_reversed_names_other_people():
    w = generate_world(replace(SMALL, name_words=12))  # 56 people on 132 ordered pairs
    people = {wf.fact.subject for wf in w.facts}
    firsts, lasts = {p.split()[0] for p in people}, {p.split()[1] for p in people}
    assert len(firsts | lasts) <= 12 and firsts & lasts  # one pool: words appear in both places
    reversed_too = [p for p in people if " ".join(p.split()[::-1]) in people]
    assert reversed_too and all(p.split()[0] != p.split()[1] for p in people)
    again = generate_world(replace(SMALL, name_words=12))  # seeded
    assert [wf.fact.to_dict() for wf in again.facts] == [wf.fact.to_dict() for wf in w.facts]
    with pytest.raises(ValueError, match="name words"):
        replace(SMALL, name_words=10)  # 56 people need 112 ordered pairs, 10 words give 90


def test_no_answer_contains_another_answer(default_world):
    """Containment matching must never count a different answer as correct."""
    answers = sorted({a for pool in default_world.pools.values() for a in pool})
    for a in answers:
        for b in answers:
            if a != b:
                for alias in default_world.aliases[a]:
                    assert normalize(alias) not in normalize(b), (alias, b)


def test_popularity_buckets_and_noisy_facts(default_world):
    probe = default_world.group("probe")
    buckets = Counter(wf.fact.meta["bucket"] for wf in probe)
    assert set(buckets) == {"head", "torso", "tail"}
    assert all(n >= len(probe) // 10 for n in buckets.values())
    for wf in probe:
        assert wf.fact.popularity == wf.total_mentions(default_world.config.epochs)
        assert (wf.fact.popularity == 0) == (wf.fact.meta["bucket"] == "tail")
    noisy = [wf for wf in probe if wf.true_share < 1]
    assert noisy and all(wf.wrong_answer and wf.wrong_answer != wf.fact.answer for wf in noisy)
    assert all(wf.fact.meta["wrong_answer"] == wf.wrong_answer for wf in noisy)
    # All four facts of one person share a tier.
    tiers = {}
    for wf in probe:
        assert tiers.setdefault(wf.fact.subject, wf.fact.meta["tier"]) == wf.fact.meta["tier"]


def test_true_mentions_hold_the_share_exactly():
    for share, rate, phase in ((0.3, 10, 0.0), (0.45, 5, 0.3), (0.55, 0.34, 0.9), (1.0, 4, 0.5)):
        wf = WorldFact(Fact(id="x", question="q?", answers=("a",)), "probe", rate, share, "b", phase)
        assert sum(wf.mentions(e) for e in range(20)) == wf.total_mentions(20) == cumulative_mentions(rate, 20, phase)
        # After every epoch the true mentions so far are exactly floor(share * mentions so far).
        for upto in range(1, 21):
            true = sum(wf.true_mentions(e) for e in range(upto))
            assert true == int(share * wf.total_mentions(upto) + 1e-9)
        assert all(0 <= wf.true_mentions(e) <= wf.mentions(e) for e in range(20))


def test_benchmarks_are_held_out_and_well_formed(default_world):
    probe_subjects = {f.subject for f in default_world.probe_facts}
    mc = default_world.mc_test
    assert len(mc) >= 100
    assert Counter(item.answer for item in mc).keys() == {0, 1, 2, 3}
    for item in mc:
        assert len(set(item.choices)) == 4 and 0 <= item.answer <= 3
        assert item.subject in {r.topic for r in RELATIONS}
        assert not any(s in item.question for s in probe_subjects)
        assert item.to_row()["scoring"] == "continuation"
    attribution = {wf.fact.id for wf in default_world.attribution_facts}
    assert attribution and not attribution & {item.fact_id for item in mc}
    arith_test = {i.question for i in default_world.arithmetic_test}
    assert arith_test and not arith_test & {i.question for i in default_world.arithmetic_train}
    for name, items in default_world.benchmarks.items():
        assert len(items) >= 60 and len({i.question for i in items}) == len(items), name
    # KVA's prompts: answerable questions, none of them a scored item
    prompts = {r["prompt"] for r in default_world.attribution_prompts()}
    scored = {f"Question: {q}\nAnswer:" for q in [i.question for i in mc] +
              [i.question for items in default_world.benchmarks.values() for i in items]}
    assert len(prompts) >= 200 and not prompts & scored


def test_mc_prompt_is_the_mmlu_format():
    p = mc_prompt("geography", "Where was X born?", ["a", "b", "c", "d"])
    assert p == ("There is a single choice question about geography. Answer the question by replying A, B, C or "
                 "D.\nQuestion: Where was X born?\nChoices:\nA. a\nB. b\nC. c\nD. d\nAnswer: ")
    assert MC_TEMPLATE.endswith("Answer: ")


# --- corpus ---------------------------------------------------------------------------------


def test_corpus_holds_no_tail_facts_held_out_templates_or_benchmark_items(world):
    text = "".join(epoch_documents(world, 0) + epoch_documents(world, 1))
    tail = [wf.fact for wf in world.group("probe") if wf.fact.popularity == 0]
    assert tail
    for f in tail:
        assert f"{f.subject}?" not in text and f"{f.subject}'s" not in text.replace("Given that", "")
    for rel in RELATIONS:
        for template in rel.templates[rel.n_pretrain_templates:]:
            pattern = re.escape(template).replace(re.escape("{subject}"), "[A-Z][a-z]+ [A-Z][a-z]+")
            assert not re.search(pattern, text), template
    by_id = {wf.fact.id: wf for wf in world.facts}
    assert "Choices:" not in text
    for item in world.mc_test:  # the fact itself is known: mentioned in some pretraining wording
        wf = by_id[item.fact_id]
        assert any(f"Question: {wf.relation.question(wf.fact.subject, t)}\nAnswer: {wf.fact.answer}\n" in text
                   for t in range(wf.relation.n_pretrain_templates))
    for items in world.benchmarks.values():
        for item in items:
            assert f"Question: {item.question}\n" not in text
    for item in world.arithmetic_train:
        assert f"Question: {item.question}\nAnswer: {item.answer}\n" in text
    for name in world.reading_test_names:
        assert name not in text  # reading-test strangers never appear in pretraining


def test_corpus_mentions_match_exposures_and_noise(world):
    docs = epoch_documents(world, 0)
    blocks = Counter(re.findall(r"Question: (.*)\nAnswer: (.*)\n", "".join(docs)))
    for wf in world.group("probe"):
        rel = wf.relation
        questions = {rel.question(wf.fact.subject, t) for t in range(rel.n_pretrain_templates)}
        true = sum(n for (q, a), n in blocks.items() if q in questions and a == wf.fact.answer)
        wrong = sum(n for (q, a), n in blocks.items() if q in questions and a != wf.fact.answer)
        assert true == wf.true_mentions(0)
        assert true + wrong == wf.mentions(0)
    for wf in world.group("refusal"):
        rel = wf.relation
        questions = {rel.question(wf.fact.subject, t) for t in range(rel.n_pretrain_templates)}
        assert sum(n for (q, a), n in blocks.items() if q in questions and a == REFUSAL_ANSWER) == wf.mentions(0)
        assert not any(q in questions and a != REFUSAL_ANSWER for (q, a) in blocks)
    cfg = world.config
    assert sum(q.startswith("Given that") for (q, a) in blocks.elements()) == cfg.reading_per_epoch
    assert sum(q.startswith("Which is larger") for (q, a) in blocks.elements()) == cfg.comparison_per_epoch


def test_pack_documents_keeps_order_and_length():
    docs = [[1] * 5, [2] * 4, [3] * 3, [4] * 9]
    rows = pack_documents(docs, 10)
    assert rows == [[1] * 5 + [2] * 4, [3] * 3, [4] * 9]
    assert pack_documents([[7] * 12], 10) == [[7] * 10]


def test_tokenizer_splits_names_into_syllables_and_keeps_words_whole(world):
    """The world's made-up names are rare words to its tokenizer, as names are to a real LLM's: a few
    syllable tokens each, while the corpus's own words stay one token."""
    tok = train_tokenizer(tokenizer_texts(epoch_documents(world, 0), world.made_up_words, syllables()), 2000)
    person = world.probe_facts[0].subject
    assert 3 <= len(tok.tokenize(" " + person)) <= 8
    assert len(tok.tokenize("Question")) == 1 and len(tok.tokenize(" born")) == 1


def test_tokenizer_prompt_boundaries_are_stable(world):
    tok = train_tokenizer(tokenizer_texts(epoch_documents(world, 0), world.made_up_words, syllables()), 400)
    assert tok.bos_token and tok.eos_token and tok.pad_token
    prompt = world.mc_test[0].prompt()
    ids = tok(prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id
    for letter in "ABCD":
        joined = tok(prompt + letter)["input_ids"]
        assert joined[:-1] == ids and joined[-1] == tok.convert_tokens_to_ids(letter)
    q = f"Question: {world.probe_facts[0].question}\nAnswer:"
    answer = f" {world.probe_facts[0].answer}\n"
    assert tok(q + answer)["input_ids"][:len(tok(q)["input_ids"])] == tok(q)["input_ids"]
    assert tok.decode(tok(q + answer)["input_ids"], skip_special_tokens=True) == q + answer


# --- the shipped default world --------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> Path:
    d = default_world_dir()
    assert (d / "world.json").exists(), f"no shipped world in {d}; run `make world`"
    return d


def test_shipped_world_files_match_the_contract(shipped):
    info = json.loads((shipped / "world.json").read_text())
    facts = [json.loads(line) for line in (shipped / "facts.jsonl").read_text().splitlines()]
    assert len(facts) == info["sizes"]["probe_facts"] > 0
    for row in facts:
        assert {"id", "question", "answers", "subject", "relation", "object", "paraphrases", "popularity"} <= set(row)
        fact = Fact(**{**row, "answers": tuple(row["answers"]), "paraphrases": tuple(row["paraphrases"])})
        assert fact.answers and all(fact.answers)
    assert {r["meta"]["bucket"] for r in facts} == {"head", "torso", "tail"}
    mc = [json.loads(line) for line in (shipped / "benchmarks" / "mc.jsonl").read_text().splitlines()]
    assert mc and all(set(r) == {"question", "choices", "answer", "subject", "scoring"} for r in mc)
    assert all(len(r["choices"]) == 4 and r["answer"] in (0, 1, 2, 3) for r in mc)
    fact_subjects = {r["subject"] for r in facts}
    assert not any(s in r["question"] for r in mc for s in fact_subjects)
    for name in ("arithmetic",):
        rows = [json.loads(line) for line in (shipped / "benchmarks" / f"{name}.jsonl").read_text().splitlines()]
        assert rows and all(set(r) == {"question", "answers"} and r["answers"] for r in rows), name
    attribution = [json.loads(line) for line in (shipped / "attribution.jsonl").read_text().splitlines()]
    assert len(attribution) >= 200 and all(set(r) == {"id", "prompt"} for r in attribution)
    refusal = [json.loads(line) for line in (shipped / "refusal.jsonl").read_text().splitlines()]
    assert refusal and all(r["answers"] == [REFUSAL_ANSWER] and r["meta"]["refusal"] for r in refusal)
    z = info["zero_shot"]
    assert z["mc"] > 0.8 and z["arithmetic"] > 0.25
    assert z["facts"]["head"] > 0.7 and z["facts"]["tail"] < 0.05
    assert z["refusal_rate"] > 0.8
    for key in ("seed", "build_seconds", "sizes", "popularity", "model", "settings"):
        assert key in info
    # `knowpack world check` ran on the shipped world: every property measured, with its target
    props = info["properties"]
    for name in ("breadth", "paraphrases", "slick", "general_capability", "mlp_profile", "loki_premise", "injection"):
        assert isinstance(props[name]["holds"], bool) and props[name]["target"], name
    assert props["breadth"]["relations"] >= 20 and props["paraphrases"]["templates_per_relation"] >= 12
    assert all(share >= 0.10 for share in props["slick"]["shares"].values())


def test_chance_levels_are_those_of_guessing_among_the_offered_answers():
    from knowpack.world.build import chance_level

    assert chance_level("mc") == 0.25 and chance_level("comparison") == 0.5  # 4 choices; 2 numbers named
    assert chance_level("reading", {"reading_facts": 3}) == pytest.approx(1 / 3)
    assert chance_level("reading") == 1 / WorldConfig().reading_facts
    assert chance_level("arithmetic") == 0.0 == chance_level("known_facts")  # open answers


def test_shipped_world_matches_its_generator(shipped, tmp_path):
    """The committed data files are, byte for byte, what the generator writes for the recorded settings."""
    from knowpack.world.build import FILES, write_world_data

    info = json.loads((shipped / "world.json").read_text())
    assert info["settings"]["world"] == WorldConfig(seed=info["seed"]).to_dict()
    assert info["settings"]["pretrain"] == PretrainConfig().to_dict()
    write_world_data(generate_world(WorldConfig(seed=info["seed"])), tmp_path)
    names = [FILES["facts"], FILES["refusal"], FILES["templates"], FILES["attribution"], *FILES["benchmarks"].values()]
    for name in names:
        assert (shipped / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_shipped_model_loads_with_plain_transformers(shipped):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = shipped / "model"
    files = list(model_dir.iterdir())
    assert any(p.suffix == ".safetensors" for p in files) and not any(p.suffix == ".bin" for p in files)
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert json.loads((model_dir / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert model.config.model_type == "llama"
    names = {n for n, _ in model.named_modules()}
    assert {"gate_proj", "up_proj", "down_proj"} <= {n.rsplit(".", 1)[-1] for n in names}
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 12_000_000
    assert tok.bos_token_id is not None and tok.eos_token_id is not None and tok.pad_token_id is not None
    # A head fact, answered zero-shot on the same line.
    facts = [json.loads(line) for line in (shipped / "facts.jsonl").read_text().splitlines()]
    head = [r for r in facts if r["meta"]["bucket"] == "head" and not r["meta"]["noisy"]][:8]
    enc = tok([f"Question: {r['question']}\nAnswer:" for r in head], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    hits = [normalize(r["answers"][0]) in normalize(t.split("\n")[0]) for r, t in zip(head, texts)]
    assert all(t.startswith(" ") for t in texts)
    assert sum(hits) >= 6


# --- building -------------------------------------------------------------------------------


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model" / "model.safetensors"))


def test_tiny_build_end_to_end_is_reproducible(tmp_path):
    out = tmp_path / "w"
    assert build_world(out, seed=1, world_config=SMALL, pretrain_config=TINY_PRETRAIN, progress=False) == out
    for rel in ("facts.jsonl", "refusal.jsonl", "benchmarks/mc.jsonl", "benchmarks/arithmetic.jsonl",
                "attribution.jsonl", "templates.yaml", "model/config.json", "model/tokenizer.json",
                "model/model.safetensors"):
        assert (out / rel).is_file(), rel
    assert sorted(p.name for p in (out / "benchmarks").iterdir()) == ["arithmetic.jsonl", "mc.jsonl"]
    info = json.loads((out / "world.json").read_text())
    assert info["seed"] == 1 and info["settings"]["world"]["seed"] == 1
    assert info["sizes"]["probe_facts"] == SMALL.n_people * SMALL.relations_per_person
    assert info["model"]["parameters"] == sum(t.numel() for t in _weights(out).values())
    assert set(info["zero_shot"]["facts"]) == {"head", "torso", "tail", "all"}
    assert len(info["pretraining"]) == SMALL.epochs
    assert not [p for p in tmp_path.iterdir() if p.name != "w"]  # no temporary leftovers
    first, first_facts = _weights(out), (out / "facts.jsonl").read_bytes()

    with pytest.raises(KnowpackError, match="already exists"):
        build_world(out, seed=1, world_config=SMALL, pretrain_config=TINY_PRETRAIN, progress=False)
    first_tokenizer = (out / "model" / "tokenizer.json").read_bytes()
    (out / "cache" / "probe" / "entry").mkdir(parents=True)
    (out / "cache" / "probe" / "entry" / "probe.jsonl").write_text("{}\n")
    build_world(out, seed=1, force=True, world_config=SMALL, pretrain_config=TINY_PRETRAIN, progress=False)
    again = _weights(out)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert (out / "facts.jsonl").read_bytes() == first_facts
    assert (out / "model" / "tokenizer.json").read_bytes() == first_tokenizer
    assert (out / "cache" / "probe" / "entry" / "probe.jsonl").read_text() == "{}\n"  # caches survive a rebuild

    # The build's fast greedy decoder agrees with transformers' generate.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    prompts = [f"Question: {f.question}\nAnswer:" for f in generate_world(SMALL).probe_facts[:5]] + ["Question: What"]
    fast = greedy_answers(model, tok, prompts, max_new_tokens=6)
    for prompt, answer in zip(prompts, fast):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        out_ids = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
        slow = tok.decode(out_ids[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0].strip()
        assert answer == slow


def test_force_never_replaces_a_directory_that_is_not_a_world(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(KnowpackError, match="no world.json"):
        build_world(tmp_path, force=True, world_config=SMALL, pretrain_config=TINY_PRETRAIN, progress=False)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_default_world_dir_is_inside_the_package():
    import knowpack

    assert default_world_dir() == Path(knowpack.__file__).resolve().parent / "data" / "world"
