"""Probe prompts, probe_facts output, summaries, files and the probe cache (knowpack.probe)."""

from __future__ import annotations

import json

import pytest
import torch

from knowpack.config import load_config
from knowpack.errors import ConfigError
from knowpack.facts import Fact, FactSet
from knowpack.models import tiny_model, tiny_tokenizer
from knowpack.probe import (
    CATEGORIES,
    Completions,
    ProbeSettings,
    answer_zero_shot,
    build_probe_prompts,
    load_probe_cache,
    model_fingerprint,
    probe_cache_key,
    probe_facts,
    save_probe_cache,
    select_exemplars,
    summarize_probe,
    write_probe,
)

SMALL = dict(n_prompts=3, shots=2, n_samples=2, max_new_tokens=6, batch_size=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def make_facts(n: int = 20, relations: tuple[str | None, ...] = ("capital", "river")) -> FactSet:
    return FactSet(Fact(id=f"f{i}", question=f"Q{i}: where is thing {i}?", answers=(f"Place{i}",),
                        relation=relations[i % len(relations)]) for i in range(n))


# --- prompts -------------------------------------------------------------------------------


def test_exemplars_same_relation_never_self_and_deterministic():
    facts = make_facts(20)
    ex = select_exemplars(facts, n_prompts=10, shots=4, seed=0)
    for fact, per_prompt in zip(facts, ex):
        assert len(per_prompt) == 10
        for shots in per_prompt:
            assert len(shots) == 4
            assert fact.id not in [e.id for e in shots]
            assert {e.relation for e in shots} == {fact.relation}
            assert len({e.id for e in shots}) == 4
    assert ex == select_exemplars(facts, n_prompts=10, shots=4, seed=0)
    assert ex != select_exemplars(facts, n_prompts=10, shots=4, seed=1)


def test_per_question_exemplars_depend_on_the_fact_alone():
    """Gekhman et al. draw exemplars per question: each fact's own seeded sample, the same whatever
    else is probed and in whatever order, and different facts get different sets."""
    facts = make_facts(40)
    ex = select_exemplars(facts, n_prompts=5, shots=3, seed=0, exemplars=facts)
    subset = FactSet([facts[j] for j in (17, 3, 30)])
    sub = select_exemplars(subset, n_prompts=5, shots=3, seed=0, exemplars=facts)
    assert sub == [ex[17], ex[3], ex[30]]
    capital = [j for j, f in enumerate(facts) if f.relation == "capital"]
    distinct = {tuple(e.id for e in ex[j][0]) for j in capital}
    assert len(distinct) > len(capital) // 2  # not one shared set per relation
    shared = select_exemplars(facts, n_prompts=5, shots=3, seed=0, mode="shared")
    assert len({tuple(e.id for e in shared[j][0]) for j in capital}) <= 1 + 3  # one set, substitutes for its own
    with pytest.raises(ValueError, match="exemplar mode"):
        select_exemplars(facts, mode="nope")


def test_prefix_shared_by_all_facts_of_a_relation(tok):
    facts = make_facts(20)
    prompts = build_probe_prompts(facts, tok, n_prompts=5, shots=3, seed=0, mode="shared")
    ex = select_exemplars(facts, n_prompts=5, shots=3, seed=0, mode="shared")
    for i in range(5):
        for rel in ("capital", "river"):
            idx = [j for j, f in enumerate(facts) if f.relation == rel]
            prefixes = [prompts[j][i].prefix for j in idx]
            # one prefix for the relation; facts that are themselves exemplars get a substitute
            common = max(set(prefixes), key=prefixes.count)
            for j, p in zip(idx, prefixes):
                if p != common:
                    assert facts[j].question in common and facts[j].question not in p
                    assert facts[j].id not in [e.id for e in ex[j][i]]
            assert prefixes.count(common) >= len(idx) - 3
    p = prompts[0][0]
    assert p.suffix == f"Question: {facts[0].question}\nAnswer:"
    assert p.prefix.count("Question: ") == 3 and p.prefix.endswith("\n")
    assert facts[0].question not in p.prefix and "Place0" not in p.prefix


def test_pool_exemplars_without_relations(tok):
    facts = make_facts(12, relations=(None,))
    ex = select_exemplars(facts, n_prompts=4, shots=4, seed=0)
    for fact, per_prompt in zip(facts, ex):
        for shots in per_prompt:
            assert len(shots) == 4 and fact.id not in [e.id for e in shots]
    prompts = build_probe_prompts(facts, tok, n_prompts=4, shots=4, mode="shared")
    assert len({prompts[j][0].prefix for j in range(12)}) <= 1 + 4  # one pool block + substitutes


def test_small_relation_falls_back_to_pool():
    facts = FactSet(list(make_facts(10)) + [Fact(id="lonely", question="Q?", answers=("A",), relation="rare")])
    ex = select_exemplars(facts, n_prompts=2, shots=4)
    assert all(len(s) == 4 and "lonely" not in [e.id for e in s] for s in ex[-1])


def test_chat_prompt_uses_template():
    chat_tok = tiny_tokenizer()
    chat_tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
                              "{% if add_generation_prompt %}[assistant]{% endif %}")
    p = build_probe_prompts(make_facts(6), chat_tok, n_prompts=1, shots=2)[0][0]
    assert p.prefix.startswith("[system]Answer the following question.\n[user]Question: ")
    assert "[assistant]Answer: Place" in p.prefix
    assert p.suffix == "[user]Question: Q0: where is thing 0?\n[assistant]Answer:"
    assert build_probe_prompts(make_facts(6), chat_tok, n_prompts=1, shots=2, chat=False)[0][0].prefix.startswith(
        "Question: ")


# --- probing -------------------------------------------------------------------------------


class ScriptedBackend:
    """Answers from a table, to check the category arithmetic end to end."""

    def __init__(self, table):
        self.table, self.calls = table, 0

    def generate(self, prompts, *, greedy=True, n_samples=0, progress=None, **kw):
        self.calls += 1
        out = []
        for p in prompts:
            q = p.suffix.split("Question: ")[-1].split("\n")[0]
            g, s = self.table[q]
            out.append(Completions(g if greedy else None, [s] * n_samples))
        if progress:
            progress(len(prompts))
        return out


def test_probe_categories_from_answers(tok):
    facts = FactSet([Fact(id=str(i), question=f"q{i}", answers=("yes",)) for i in range(4)])
    table = {"q0": ("yes", "no"), "q1": ("no", "yes"), "q2": ("no", "no"), "q3": ("I don't know, yes", "yes")}
    settings = ProbeSettings(n_prompts=2, shots=1, n_samples=3)
    rows = probe_facts(None, tok, facts, settings, backend=ScriptedBackend(table), progress=False)
    assert [r["category"] for r in rows] == ["HighlyKnown", "WeaklyKnown", "Unknown", "WeaklyKnown"]
    assert rows[0]["p_greedy"] == 1.0 and rows[0]["p_sample"] == 0.0
    assert rows[3]["refused"] == [True, True] and rows[3]["p_greedy"] == 0.0
    assert rows[2]["greedy_answers"] == ["no", "no"]
    off = probe_facts(None, tok, facts, ProbeSettings(n_prompts=2, shots=1, n_samples=0),
                      backend=ScriptedBackend(table), progress=False)
    assert [r["category"] for r in off] == ["HighlyKnown", "Unknown", "Unknown", "Unknown"]
    assert all(r["p_sample"] is None for r in off)
    lazy = probe_facts(None, tok, facts, ProbeSettings(n_prompts=2, shots=1, n_samples=3, lazy_samples=True),
                       backend=ScriptedBackend(table), progress=False)
    assert [r["category"] for r in lazy] == [r["category"] for r in rows]
    assert [r["p_sample"] for r in lazy] == [None, 1.0, 0.0, 1.0]
    s = summarize_probe(rows, settings)
    assert s["counts"] == {"HighlyKnown": 1, "MaybeKnown": 0, "WeaklyKnown": 2, "Unknown": 1}
    assert s["shares"]["WeaklyKnown"] == 0.5 and s["greedy_refusal_rate"] == 0.25
    assert s["settings"]["n_samples"] == 3


def test_probe_byte_identical_for_same_seed(tok, tmp_path):
    model = tiny_model("llama", seed=2, vocab_size=len(tok))
    facts = make_facts(8)
    settings = ProbeSettings(**SMALL, temperature=1.0)
    files = []
    for run in range(2):
        rows = probe_facts(model, tok, facts, settings, progress=False)
        files.append(write_probe(tmp_path / f"run{run}", rows, summarize_probe(rows, settings)))
    assert files[0][0].read_bytes() == files[1][0].read_bytes()
    assert files[0][1].read_bytes() == files[1][1].read_bytes()
    rows = [json.loads(line) for line in files[0][0].read_text().splitlines()]
    assert [r["id"] for r in rows] == facts.ids()
    assert all(r["category"] in CATEGORIES and len(r["greedy_answers"]) == 3 == len(r["refused"]) for r in rows)
    other = probe_facts(model, tok, facts, ProbeSettings(**SMALL, temperature=1.0, keep_samples=True, seed=5),
                        progress=False)
    assert [r["sampled_answers"] for r in other] != [r.get("sampled_answers") for r in rows]
    assert all(len(r["sampled_answers"]) == 3 and len(r["sampled_answers"][0]) == 2 for r in other)


def test_answer_zero_shot(tok):
    model = tiny_model("qwen2", seed=1, vocab_size=len(tok))
    answers = answer_zero_shot(model, tok, ["Where is thing 1?", "Who?"], max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) and "\n" not in a for a in answers)
    assert answer_zero_shot(model, tok, []) == []


# --- settings and cache --------------------------------------------------------------------


def test_settings_validate_and_load():
    s = load_config(ProbeSettings, None, ["n_samples=0", "match=exact"])
    assert s.n_samples == 0 and s.match == "exact"
    with pytest.raises(ConfigError):
        load_config(ProbeSettings, None, ["n_sample=3"])
    with pytest.raises(ValueError):
        ProbeSettings(match="fuzzy")
    with pytest.raises(ValueError):
        ProbeSettings(temperature=0)
    assert ProbeSettings(temperature=0, n_samples=0).n_samples == 0


def test_fingerprint_ignores_where_the_model_was_loaded_from(tok, tmp_path):
    from knowpack.models import load_model

    model = tiny_model("llama", seed=4, vocab_size=len(tok))
    for d in ("a", "b"):
        model.save_pretrained(tmp_path / d)
    a, _ = load_model(tmp_path / "a", with_tokenizer=False)
    b, _ = load_model(tmp_path / "b", with_tokenizer=False)
    assert a.config._name_or_path != b.config._name_or_path
    assert model_fingerprint(a) == model_fingerprint(b)
    b.config.rope_theta = 1234.0  # a real setting still counts
    assert model_fingerprint(a) != model_fingerprint(b)


def test_cache_never_mixes_models_facts_or_settings(tok, tmp_path):
    m1 = tiny_model("llama", seed=1, vocab_size=len(tok))
    m2 = tiny_model("llama", seed=2, vocab_size=len(tok))
    fp1, fp2 = model_fingerprint(m1), model_fingerprint(m2)
    assert fp1 != fp2 and fp1 == model_fingerprint(tiny_model("llama", seed=1, vocab_size=len(tok)))
    with torch.no_grad():
        m1.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3
    assert model_fingerprint(m1) != fp1
    facts_a, facts_b = make_facts(6), make_facts(7)
    s = ProbeSettings(**SMALL)
    rows, summary = [{"id": "x", "category": "Unknown"}], {"n_facts": 1}
    save_probe_cache(tmp_path, fp1, facts_a.fingerprint(), s, rows, summary)
    assert load_probe_cache(tmp_path, fp1, facts_a.fingerprint(), s) == (rows, summary)
    assert load_probe_cache(tmp_path, fp1, facts_a.fingerprint(), ProbeSettings(**SMALL, keep_samples=True)) is None
    assert load_probe_cache(tmp_path, fp2, facts_a.fingerprint(), s) is None
    assert load_probe_cache(tmp_path, fp1, facts_b.fingerprint(), s) is None
    for change in (dict(seed=1), dict(n_samples=3), dict(match="exact"), dict(refusal_patterns=("nope",)),
                   dict(sample_seed=4), dict(exemplars="shared"), dict(temperature=0.7)):
        assert load_probe_cache(tmp_path, fp1, facts_a.fingerprint(), ProbeSettings(**{**SMALL, **change})) is None
    # with common random numbers the batch size changes no answer, so it shares the entry
    assert load_probe_cache(tmp_path, fp1, facts_a.fingerprint(), ProbeSettings(**{**SMALL, "batch_size": 3})) \
        == (rows, summary)
    assert load_probe_cache(tmp_path, fp1, facts_a.fingerprint(), s, exemplars_fingerprint="pool") is None
    keys = {probe_cache_key(m, f, x, exemplars_fingerprint=e) for m in (fp1, fp2) for f in ("a", "b")
            for x in (s, ProbeSettings()) for e in (None, "pool")}
    assert len(keys) == 16
    # A damaged entry (a key file naming another probe) is not trusted.
    key_file = next(tmp_path.glob("*/cache_key.json"))
    key_file.write_text(json.dumps({"model": fp2, "facts": "?", "settings": "?"}))
    assert load_probe_cache(tmp_path, fp1, facts_a.fingerprint(), s) is None


def test_a_subset_in_another_order_and_batch_size_gives_identical_rows(tok):
    """Common random numbers: a fact's row does not depend on which other facts are probed, their
    order, the batch size or lazy sampling; so an unchanged model re-probed shows no shift at all."""
    model = tiny_model("llama", seed=7, vocab_size=len(tok))
    facts = make_facts(24)
    base = dict(n_prompts=3, shots=2, n_samples=4, temperature=1.0, max_new_tokens=5, keep_samples=True)
    full = probe_facts(model, tok, facts, ProbeSettings(**base, batch_size=8), progress=False, exemplars=facts)
    pick = [21, 4, 13, 0, 9]
    sub = probe_facts(model, tok, FactSet([facts[j] for j in pick]), ProbeSettings(**base, batch_size=3),
                      progress=False, exemplars=facts)
    assert sub == [full[j] for j in pick]
    assert len({a for r in full for s in r["sampled_answers"] for a in s}) > 3  # real samples
    lazy = probe_facts(model, tok, facts, ProbeSettings(**base, batch_size=5, lazy_samples=True), progress=False,
                       exemplars=facts)
    for a, b in zip(lazy, full):
        assert a["category"] == b["category"] and a["greedy_answers"] == b["greedy_answers"]
        if a["p_sample"] is not None:  # the facts lazy sampling samples get the same samples
            assert a["p_sample"] == b["p_sample"] and a["sampled_answers"] == b["sampled_answers"]
    other = probe_facts(model, tok, facts, ProbeSettings(**base, batch_size=8, sample_seed=99), progress=False,
                        exemplars=facts)
    assert [r["greedy_answers"] for r in other] == [r["greedy_answers"] for r in full]  # same prompts
    assert [r["sampled_answers"] for r in other] != [r["sampled_answers"] for r in full]
