"""Training: composition, exact trainable-parameter counts, adapter round trips, resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from knowpack.adapters import load_adapted, merge_adapter
from knowpack.compose import ComposeSettings, compose
from knowpack.facts import Fact, FactSet
from knowpack.methods import count_trainable, detect_adapter, get_method, method_names
from knowpack.methods.peft_methods import LoraSettings
from knowpack.models import load_model, tiny_model
from knowpack.train import EarlyStopSettings, TrainSettings, collate, tokenize_rows, train

CATS = ["HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown"]


def make_facts(n=40):
    facts = [Fact(id=f"f{i}", question=f"Where was person {i} born?", answers=(f"town{i % 7}",),
                  relation="birthplace", paraphrases=(f"Person {i} was born where?", f"Birthplace of person {i}?"))
             for i in range(n)]
    rows = [{"id": f.id, "category": CATS[i % 4]} for i, f in enumerate(facts)]
    return FactSet(facts), rows


def test_compose_picks_seeded_random_unknowns_and_writes_exact_text(tok):
    facts, rows = make_facts()
    s = ComposeSettings(n_unknown=5, mixing="highly_known", k=1, eval_size=4, retention_size=2, seed=3)
    comp = compose(facts, rows, s, tok)
    unknown_pool = [r["id"] for r in rows if r["category"] == "Unknown"]
    assert set(comp.unknown_ids) <= set(unknown_pool)
    assert comp.unknown_ids != unknown_pool[:5]  # random, not the first n (seed 3)
    assert comp.unknown_ids == compose(facts, rows, s, tok).unknown_ids
    assert not set(comp.mixed_ids) & set(comp.eval_ids)
    assert not set(comp.unknown_ids) & set(comp.eval_ids)
    assert {facts[i].relation for i in comp.mixed_ids} and all(
        r["category"] == "HighlyKnown" for r in rows if r["id"] in comp.mixed_ids)
    kinds = [r["kind"] for r in comp.rows]
    assert kinds.count("unknown") == 5 and kinds.count("known") == 5
    row = next(r for r in comp.rows if r["kind"] == "unknown")
    fact = facts[row["fact_id"]]
    assert row["prompt"] + row["completion"] == f"Question: {fact.question}\nAnswer: {fact.answer}\n"
    assert len({r["id"] for r in comp.rows}) == len(comp.rows)


def test_compose_paraphrase_mixing_uses_train_paraphrases_only(tok):
    facts, rows = make_facts()
    comp = compose(facts, rows, ComposeSettings(n_unknown=4, mixing="paraphrase", k=2, eval_size=0), tok)
    for r in comp.rows:
        if r["kind"] == "paraphrase":
            train_p, held = facts[r["fact_id"]].split_paraphrases(0.5, 0)
            assert any(f"Question: {p}\n" in r["prompt"] for p in train_p)
            assert not any(f"Question: {p}\n" in r["prompt"] for p in held)


def test_compose_errors_name_the_fix(tok):
    facts, rows = make_facts(8)
    with pytest.raises(ValueError, match="n_unknown"):
        compose(facts, rows, ComposeSettings(n_unknown=50), tok)


def test_compose_reuses_known_facts_only_when_asked(tok):
    facts, rows = make_facts(40)  # 10 HighlyKnown, 10 Unknown
    s = ComposeSettings(n_unknown=4, mixing="highly_known", k=5, eval_size=4, retention_size=2, seed=1)
    with pytest.raises(ValueError, match="reuse_known=true"):
        compose(facts, rows, s, tok)
    with pytest.raises(ValueError, match="retention_size=20"):
        compose(facts, rows, ComposeSettings(**{**s.__dict__, "reuse_known": True, "retention_size": 20}), tok)
    comp = compose(facts, rows, ComposeSettings(**{**s.__dict__, "reuse_known": True}), tok)
    known = [r["fact_id"] for r in comp.rows if r["kind"] == "known"]
    assert len(known) == 20  # k * n_unknown examples, as without reuse
    counts = {f: known.count(f) for f in set(known)}
    assert max(counts.values()) - min(counts.values()) <= 1  # each used about equally often
    assert set(known) == set(comp.mixed_ids)
    highly = {r["id"] for r in rows if r["category"] == "HighlyKnown"}
    assert set(known) <= highly and not set(known) & set(comp.eval_ids)
    # Known facts kept back for the retention check are never trained on; exactly retention_size of them.
    assert len(comp.retention_ids) == 2 and not set(comp.retention_ids) & set(known)
    # every HighlyKnown fact is either evaluated, kept back or mixed in
    assert len(set(known)) == len(highly - set(comp.eval_ids)) - 2
    assert set(comp.retention_ids) <= highly
    assert len({r["id"] for r in comp.rows}) == len(comp.rows)


def test_loss_on_answer_masks_the_prompt(tok):
    rows = [{"prompt": "Question: a?\nAnswer:", "completion": " b\n"}]
    (ids, labels), = tokenize_rows(rows, tok, "answer")
    n_prompt = len(tok("Question: a?\nAnswer:")["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
    (ids2, labels2), = tokenize_rows(rows, tok, "all")
    assert labels2 == ids2
    batch = collate([(ids, labels), (ids[:3], labels[:3])], pad_id=0)
    assert batch["attention_mask"][1].sum() == 3 and (batch["labels"][1, 3:] == -100).all()


def expected_trainable(method, model, r):
    cfg = model.config
    d, f, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    lora = L * r * ((d + f) + (d + f) + (f + d))  # A: r x in, B: out x r for gate, up, down
    if method in ("lora", "pissa"):
        return lora
    if method == "dora":
        return lora + L * (f + f + d)  # one magnitude per output feature
    if method == "full":
        return sum(p.numel() for p in model.parameters())
    raise AssertionError(method)


@pytest.mark.parametrize("name", [m for m in method_names() if get_method(m).settings_key in ("lora", None)])
def test_exact_trainable_counts(name, tok):
    model = tiny_model("llama", vocab_size=len(tok))
    want = expected_trainable(name, model, 2)
    prepared = get_method(name).prepare(copy.deepcopy(model), LoraSettings(r=2))
    assert count_trainable(prepared) == want


def _rows(tok, n=6):
    facts, probe = make_facts(4 * n)
    return compose(facts, probe, ComposeSettings(n_unknown=n, eval_size=0, retention_size=0), tok).rows


@pytest.mark.parametrize("name", [m for m in method_names() if get_method(m).settings_key in ("lora", None)])
def test_adapter_save_load_merge_gives_the_trained_logits(name, tiny_dir, tmp_path, tok):
    model, tok2 = load_model(tiny_dir, device="cpu", dtype="float32")
    settings = TrainSettings(method=name, epochs=2, batch_size=4, lr=5e-3, lora=LoraSettings(r=2, dropout=0.0))
    result = train(model, tok2, _rows(tok2), settings, tmp_path / "run", base_model=str(tiny_dir), progress=False)
    x = tok2(["Question: Where was person 3 born?\nAnswer:"], return_tensors="pt")
    with torch.no_grad():
        trained = result.model(**x).logits
    adapter = tmp_path / "run" / "adapter"
    # The LoRA family shares PEFT's format (the variant lives in adapter_config.json).
    assert detect_adapter(adapter).adapter_marker == get_method(name).adapter_marker
    loaded, _, _ = load_adapted(str(tiny_dir), adapter, device="cpu", dtype="float32")
    with torch.no_grad():
        assert torch.allclose(loaded(**x).logits, trained, atol=1e-5)
    merged_dir = merge_adapter(str(tiny_dir), adapter, tmp_path / "merged", dtype="float32")
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        assert torch.allclose(merged(**x).logits, trained, atol=1e-4)
    base, _ = load_model(tiny_dir, device="cpu", dtype="float32")
    with torch.no_grad():
        assert not torch.allclose(base(**x).logits, trained, atol=1e-4)  # training changed something


def test_resumed_run_ends_where_an_uninterrupted_one_ends(tiny_dir, tmp_path):
    settings = TrainSettings(method="lora", epochs=3, batch_size=4, lr=5e-3, checkpoint_every=1,
                             lora=LoraSettings(r=2, dropout=0.1))

    def run(out, max_steps=None):
        model, tok = load_model(tiny_dir, device="cpu", dtype="float32")
        return train(model, tok, _rows(tok), settings, out, progress=False, max_steps=max_steps,
                     fingerprint="same")

    full = run(tmp_path / "a")
    partial = run(tmp_path / "b", max_steps=4)
    assert partial.steps == 4 and (tmp_path / "b" / "checkpoint").exists()
    assert not (tmp_path / "b" / "adapter").exists()
    resumed = run(tmp_path / "b")
    assert resumed.steps == full.steps
    a = {n: p for n, p in full.model.named_parameters() if p.requires_grad}
    b = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), n
    log = [json.loads(line) for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, full.steps + 1))
    assert not (tmp_path / "b" / "checkpoint").exists()


def test_early_stopping_stops_when_retention_drops(tiny_dir, tmp_path):
    model, tok = load_model(tiny_dir, device="cpu", dtype="float32")

    def hook(m):
        return {"reliability": 0.0, "retention": 0.7, "retention_start": 0.9}

    settings = TrainSettings(epochs=6, batch_size=4, early_stopping=EarlyStopSettings(enabled=True,
                                                                                       max_retention_drop=0.1))
    result = train(model, tok, _rows(tok), settings, tmp_path / "r", eval_hook=hook, progress=False)
    assert result.epochs == 1 and "retention" in result.stopped_early


def test_early_stopping_stops_at_reliability(tiny_dir, tmp_path):
    model, tok = load_model(tiny_dir, device="cpu", dtype="float32")
    calls = []

    def hook(m):
        calls.append(1)
        return {"reliability": 0.5 if len(calls) < 2 else 1.0, "retention": 1.0}

    settings = TrainSettings(epochs=6, batch_size=4, early_stopping=EarlyStopSettings(enabled=True))
    result = train(model, tok, _rows(tok), settings, tmp_path / "r", eval_hook=hook, progress=False)
    assert len(calls) == 2 and result.stopped_early and "reliability" in result.stopped_early
    assert result.epochs == 2
