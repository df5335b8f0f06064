"""Fair comparisons (knowpack.compare): matched reliability, the learning-rate search, controls, marking misses."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from knowpack.compare import (CompareSettings, Point, comparable, expand_points, family, load_compare, search_lr,
                              table_markdown, tabulate)
from knowpack.config import load_config
from knowpack.runs import RunConfig


def _record(pid: str, seed: int, reliability: float, neg: float) -> dict:
    h = {"reliability_zero_shot": reliability, "negative_shift": neg, "negative_shift_floor": 0.01,
         "positive_shift": 0.02, "locality": 0.7, "refusal_facts_after": None, "distinct_answers_after": 40,
         "mean_benchmark_drop_relative": 0.05, "benchmark_drop_relative": {"mc": 0.05}}
    return {"point": f"{pid}-seed={seed}", "overrides": {"compare_point": pid, "seed": seed, "lr": 1e-2},
            "metrics": {"headline": h, "run": {"steps": 100 + seed, "trainable_params": 1234}}}


def test_a_point_that_missed_the_target_is_marked_and_never_compared():
    settings = CompareSettings(target=0.95, seeds=[0, 1])
    points = [Point("a", "lora r=1", RunConfig(), "lora(r=1,alpha=2)"),
              Point("b", "loki q=10", RunConfig(), "loki(q=10)")]
    records = [_record("a", 0, 1.0, 0.2), _record("a", 1, 0.96, 0.3),
               _record("b", 0, 0.97, 0.1), _record("b", 1, 0.80, 0.1)]  # b missed on seed 1
    table = tabulate(points, records, settings, {})
    rows = {r["id"]: r for r in table["rows"]}
    assert rows["a"]["reached_target"] and not rows["b"]["reached_target"]
    assert rows["b"]["seeds_reaching_target"] == 1
    assert [r["id"] for r in comparable(table)] == ["a"]
    md = table_markdown(table)
    assert "at zero-shot reliability ≥ 95%" in md
    assert "loki q=10 ✗ missed the target (1/2 seeds): not compared" in md
    assert "Not compared (missed the target): loki q=10." in md
    assert rows["a"]["negative_shift"]["mean"] == pytest.approx(0.25) and rows["a"]["negative_shift"]["ci95"]


def test_compare_config_is_validated_with_its_section(tmp_path, tiny_dir):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": str(tiny_dir), "compare": {"target": 0.9, "seeds": [0, 1]},
                                    "points": [{"train.method": "lora"}, {"train.method": "loki"}]}))
    base, points, settings = load_compare(path)
    assert settings.target == 0.9 and settings.seeds == [0, 1] and len(points) == 2
    assert family(points[0].config) == "lora(r=1,alpha=2)" and family(points[1].config) == "loki(q=10)"
    path.write_text(yaml.safe_dump({"compare": {"target": 2, "nope": 1}}))
    with pytest.raises(Exception, match="compare.*target") as info:
        load_compare(path)
    assert "nope" in str(info.value)


def test_controls_without_the_search_train_at_their_methods_rates(tmp_path, tiny_dir):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": str(tiny_dir), "compare": {"lr_search": False, "controls": True},
                                    "points": [{"train.method": "lora", "train.lr": 3e-3},
                                               {"train.method": "loki", "train.lr": 1e-2}]}))
    _, points, settings = load_compare(path)
    controls = {p.label.split("(")[-1].rstrip(")"): p for p in expand_points(points, settings) if p.control_of}
    assert set(controls) == {"parameter-matched LoRA", "LoKI random rows", "LoKI highest rows"}
    assert controls["parameter-matched LoRA"].config.train.method == "lora"
    assert controls["parameter-matched LoRA"].config.train.lr == 3e-3  # LoRA's rate, not LoRA's default
    assert controls["LoKI random rows"].config.train.lr == controls["LoKI highest rows"].config.train.lr == 1e-2


def _knowing_model(tmp_path, tok):
    """A tiny Llama taught 12 facts (so it has known facts a bad learning rate can destroy)."""
    from knowpack.models import tiny_model

    model = tiny_model("llama", seed=0, vocab_size=len(tok))
    texts = [f"Question: Where was person {i} born?\nAnswer: town{i % 6}\n" for i in range(12)]
    enc = tok(texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(300):
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    d = tmp_path / "knowing"
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def test_the_lr_search_picks_the_known_best_rate(tmp_path, tok):
    """On a tiny model where the answer is known: too low a rate never reaches the target within the cap,
    too high a one diverges; the search must pick the one between them, and cache its trials."""
    model_dir = _knowing_model(tmp_path, tok)
    facts = tmp_path / "facts.jsonl"
    # facts 0-11 are the model's known ones; 12-17 have answers it has never seen
    facts.write_text("".join(json.dumps({"id": f"f{i}", "question": f"Where was person {i} born?",
                                         "answers": [f"town{i % 6}" if i < 12 else f"vale{i}"],
                                         "relation": "birthplace"}) + "\n" for i in range(18)))
    cfg = load_config(RunConfig, data={
        "model": str(model_dir), "facts": str(facts), "device": "cpu", "dtype": "float32", "seed": 0,
        "cache_dir": str(tmp_path / "cache"),
        "probe": {"n_prompts": 1, "shots": 0, "n_samples": 0, "max_new_tokens": 8},
        "compose": {"n_unknown": 3, "eval_size": 0, "retention_size": 8},
        "train": {"method": "lora", "batch_size": 3, "loss_on": "answer", "schedule": "constant",
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "eval": {"mc": [], "qa": [], "refusal": None}})
    settings = CompareSettings(target=1.0, max_steps=120, lrs={"lora": [1e-4, 5e-3, 1.0]})
    res = search_lr(cfg, settings, tmp_path / "out")
    trials = {t["lr"]: t for t in res["trials"]}
    assert trials[1e-4]["reliability"] < 1.0 and trials[1.0]["reliability"] < 1.0  # too low; diverged
    assert trials[5e-3]["reliability"] == 1.0 and trials[5e-3]["steps"] < 120
    assert res["chosen"] == 5e-3 and res["reached"] and trials[5e-3]["validation_facts"] == 8
    again = search_lr(cfg, settings, tmp_path / "out", train=lambda c, d: pytest.fail("trials are cached"))
    assert again["chosen"] == 5e-3


def test_the_lr_rule_prefers_least_validation_damage_then_fewer_steps(tmp_path):
    """Among rates that reach the target the least validation damage wins (then fewer steps); when none
    reaches it, the one that came closest."""
    outcomes = {1e-3: (0.97, 400, 0.10), 3e-3: (0.96, 200, 0.02), 1e-2: (0.99, 100, 0.30), 3e-2: (0.5, 500, 0.6)}

    def fake(cfg, out):
        rel, steps, loss = outcomes[cfg.train.lr]
        return {"reliability": rel, "steps": steps, "validation_loss": loss, "validation_facts": 50,
                "trainable_params": 10}

    settings = CompareSettings(target=0.95, lrs={"lora": sorted(outcomes)})
    assert search_lr(RunConfig(), settings, tmp_path / "a", train=fake)["chosen"] == 3e-3
    none = CompareSettings(target=0.995, lrs={"lora": sorted(outcomes)})
    res = search_lr(RunConfig(), none, tmp_path / "b", train=fake)
    assert res["chosen"] == 1e-2 and not res["reached"]
