"""The world builder's contract (issue: foundation): files, plain HF loading, reproducibility."""

from __future__ import annotations

import hashlib
import json

import pytest

from knowpack.errors import KnowpackError
from knowpack.evaluate.mc import load_mc
from knowpack.facts import load_facts
from knowpack.world import PretrainConfig, WorldConfig, build_world

TINY_WORLD = dict(n_people=16, epochs=2, n_reference_people=8, n_refusal_people=4)
TINY_MODEL = dict(vocab_size=400, hidden_size=32, layers=2, intermediate_size=64, heads=2, threads=1)


def build(path, seed=0):
    return build_world(path, seed=seed, world_config=WorldConfig(**TINY_WORLD),
                       pretrain_config=PretrainConfig(**TINY_MODEL), progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build(tmp_path_factory.mktemp("w") / "world")


def test_world_files_follow_the_contract(world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(world / "model")
    tok = AutoTokenizer.from_pretrained(world / "model")
    assert model.config.model_type == "llama" and hasattr(model.model.layers[0].mlp, "down_proj")
    assert tok("Question: x\nAnswer:")["input_ids"]
    facts = load_facts(world / "facts.jsonl", "native")
    assert len(facts) > 0 and all(f.popularity is not None for f in facts)
    assert any(f.paraphrases for f in facts)
    mc = load_mc(world / "benchmarks" / "mc.jsonl")
    assert all(len(r["choices"]) == 4 and 0 <= r["answer"] <= 3 and r["subject"] for r in mc)
    skills = [p for p in (world / "benchmarks").glob("*.jsonl") if p.name != "mc.jsonl"]
    assert skills and all(json.loads(p.read_text().splitlines()[0])["answers"] for p in skills)
    info = json.loads((world / "world.json").read_text())
    assert info["seed"] == 0 and "sizes" in info and "popularity" in info
    # The MC benchmark asks about other people than the probe facts (held out of facts.jsonl).
    probe_subjects = {f.subject for f in facts}
    assert not any(s in r["question"] for r in mc for s in probe_subjects)


def test_same_seed_same_weights_and_no_overwrite(world, tmp_path):
    again = build(tmp_path / "again")

    def digest(d):
        return hashlib.sha256((d / "model" / "model.safetensors").read_bytes()).hexdigest()

    assert digest(again) == digest(world)
    assert (again / "facts.jsonl").read_bytes() == (world / "facts.jsonl").read_bytes()
    with pytest.raises(KnowpackError, match="force"):
        build(tmp_path / "again")


def test_world_check_measures_every_property_on_a_tiny_build(world, tmp_path, monkeypatch):
    import shutil

    from knowpack.world.check import check_world

    monkeypatch.setenv("KNOWPACK_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "world"
    shutil.copytree(world, copy)
    said: list[str] = []
    props = check_world(copy, known_sample=20, zero_q=(5.0,), injection=False, say=said.append)
    assert set(props) == {"slick", "breadth", "paraphrases", "general_capability", "mlp_profile", "causal_trace",
                          "loki_premise", "measured_seconds"}
    trace = props["causal_trace"]
    assert set(trace) == {"mlp@last", "hidden@last", "mlp@all", "attn@end", "facts", "target", "holds"}
    assert trace["facts"] == props["mlp_profile"]["known_facts"]
    facts = load_facts(copy / "facts.jsonl", "native")
    slick = props["slick"]
    assert slick["probed_facts"] == len(facts) == sum(slick["counts"].values())
    assert sum(slick["shares"].values()) == pytest.approx(1.0)
    assert props["breadth"]["relations"] == len({f.relation for f in facts})
    assert props["breadth"]["holds"] is False  # 16 people cannot give 1,000 Unknown facts
    capability = props["general_capability"]
    assert {name: b["chance"] for name, b in capability["benchmarks"].items()} == {"mc": 0.25, "arithmetic": 0.0}
    profile = props["mlp_profile"]
    assert profile["known_facts"] == min(20, slick["counts"]["HighlyKnown"])
    if profile["known_facts"]:
        assert len(profile["known_facts_relative_drop"]) == TINY_MODEL["layers"]
    else:  # a two-epoch build knows none of its facts: no profile, and never a pass
        assert profile["known_facts_relative_drop"] == [] and profile["holds"] is False
        assert any("not measurable" in line for line in said)
    premise = props["loki_premise"]["by_q"]["5.0"]
    assert set(premise["capability_loss_pct"]) == {"layer_balanced_highest", "layer_balanced_lowest", "random"}
    lo, hi = premise["highest_minus_lowest_correct"]["ci95"]  # over the benchmarks' questions, known facts or not
    assert -1.0 <= lo <= hi <= 1.0
    if not trace["facts"]:
        assert trace["holds"] is False
    for key in ("slick", "breadth", "paraphrases", "general_capability", "mlp_profile", "causal_trace", "loki_premise"):
        assert isinstance(props[key]["holds"], bool) and props[key]["target"], key
    written = json.loads((copy / "world.json").read_text())["properties"]
    assert written["slick"]["counts"] == slick["counts"] and written["mlp_profile"]["known_facts_relative_drop"] == \
        props["mlp_profile"]["known_facts_relative_drop"]
    assert any(line.startswith("  categories:") for line in said) and any("zeroing 5%" in line for line in said)


def test_world_check_profiles_the_injection_adapter_per_layer(world, tmp_path, monkeypatch):
    """`injection_by_layer` scores a run's LoRA adapter with its update kept in one layer only and removed
    from one layer only, on the run's trained facts, the held-out known facts and the benchmarks; with
    no layer kept it scores as the base model does."""
    from peft import LoraConfig, get_peft_model

    from knowpack import ablate
    from knowpack.evaluate.stage import resolve_benchmarks
    from knowpack.models import load_model
    from knowpack.world.check import injection_by_layer, run_config

    monkeypatch.setenv("KNOWPACK_CACHE", str(tmp_path / "cache"))
    cfg = run_config(world)
    facts = load_facts(world / "facts.jsonl", "native")
    ids = [f.id for f in facts]
    trained, known = ids[:4], ids[4:10]
    run = tmp_path / "run"
    run.mkdir()
    (run / "composition.json").write_text(json.dumps({"unknown": trained}))
    model, tok = load_model(str(world / "model"), device="cpu", dtype="float32")
    scorer = ablate.Scorer(cfg, tok, resolve_benchmarks(cfg.eval, cfg.model, None), facts, known + trained[:1])
    base = ablate.Scorer(cfg, tok, scorer.bench, facts, known, fact_sets={"trained_facts": trained})(model)
    adapter = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, init_lora_weights=False,
                                               target_modules=["gate_proj", "up_proj", "down_proj"]))
    adapter.save_pretrained(str(run / "adapter"))
    said: list[str] = []
    prof = injection_by_layer(world, run, cfg, tok, scorer, facts, said.append)
    assert prof["trained_facts"] == 4 and prof["known_facts"] == 6  # a trained fact is never counted as known
    assert [lay["layer"] for lay in prof["layers"]] == list(range(TINY_MODEL["layers"]))
    assert prof["no_adapter"] == {k: v["accuracy"] for k, v in base.items()}
    for lay in prof["layers"]:
        assert set(lay["only"]) == set(lay["without"]) == set(base) >= {"trained_facts", "known_facts", "mc"}
    assert len(said) == 2 and said[0].startswith("  adapter in one layer only: L0 reliability")
