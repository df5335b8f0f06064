"""Whole runs on a tiny random model: every file of the run directory, and the capacity search."""

from __future__ import annotations

import json

import yaml

from knowpack.capacity import Budget, capacity_search
from knowpack.cli import main
from knowpack.config import load_config
from knowpack.runs import RunConfig


def write_inputs(tmp_path, tiny_dir, n=16):
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({
        "id": f"f{i}", "question": f"Where was person {i} born?", "answers": [f"town{i % 5}"],
        "relation": "birthplace", "subject": f"person {i}",
        "paraphrases": [f"Person {i} was born where?", f"What is the birthplace of person {i}?"]}) + "\n"
        for i in range(n)))
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps({"question": f"Pick {i}?", "choices": ["a", "b", "c", "d"], "answer": i % 4,
                                      "subject": "test"}) + "\n" for i in range(4)))
    qa = tmp_path / "skill.jsonl"
    qa.write_text("".join(json.dumps({"question": f"What is {i} plus 1?", "answers": [str(i + 1)]}) + "\n"
                          for i in range(3)))
    cfg = {
        "model": str(tiny_dir), "facts": str(facts), "device": "cpu", "dtype": "float32", "seed": 1,
        "cache_dir": str(tmp_path / "cache"),
        "probe": {"n_prompts": 2, "shots": 1, "n_samples": 2, "max_new_tokens": 4},
        "compose": {"n_unknown": 3, "mixing": "paraphrase", "k": 1, "eval_size": 5, "retention_size": 2},
        "train": {"method": "lora", "epochs": 2, "batch_size": 4, "lr": 1e-2, "lora": {"r": 2}},
        "eval": {"mc": [str(mc)], "qa": [str(qa)], "refusal": None},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_writes_the_whole_run_directory(tmp_path, tiny_dir, capsys):
    cfg = write_inputs(tmp_path, tiny_dir)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    for name in ("config.yaml", "env.json", "probe_before.jsonl", "probe_after.jsonl", "train.jsonl",
                 "composition.json", "train_log.jsonl", "metrics.json", "report.md", "adapter/adapter_config.json"):
        assert (out / name).exists(), name
    assert load_config(RunConfig, out / "config.yaml").compose.seed == 1  # the run seed drives compose
    env = json.loads((out / "env.json").read_text())
    assert env["seed"] == 1 and env["torch"] and env["knowpack"]
    metrics = json.loads((out / "metrics.json").read_text())
    h = metrics["headline"]
    assert h["n_trained"] == 3 and h["n_eval"] == 5
    assert set(metrics["benchmarks"]) == {"mc", "skill"}
    assert metrics["generalisation"]["zero_shot"]["denominator"] == 3  # one held-out paraphrase per fact
    after = [json.loads(line) for line in (out / "probe_after.jsonl").read_text().splitlines()]
    assert len(after) == 8 and {"id", "category", "p_greedy", "greedy_answers", "refused"} <= set(after[0])
    train_rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert sorted(r["kind"] for r in train_rows) == ["paraphrase"] * 3 + ["unknown"] * 3
    text = capsys.readouterr().out
    assert "reliability" in text and "report.md" in text
    # a second run with the same config reuses the probe and benchmark caches
    assert any((tmp_path / "cache" / "probe").iterdir()) and any((tmp_path / "cache" / "bench").iterdir())


def test_capacity_search_bisects_to_the_largest_passing_size(tmp_path):
    cfg = RunConfig()
    limit = 37  # sizes above this fail the reliability threshold
    seen = []

    def fake(c, d):
        n = c.compose.n_unknown
        seen.append(n)
        return {"headline": {"reliability": 1.0 if n <= limit else 0.5, "negative_shift": 0.0,
                             "mean_benchmark_drop_relative": 0.0, "bits_per_param": 0.1}}

    res = capacity_search(cfg, tmp_path, Budget(0.01, 0.01), start=5, resolution=0.0, run=fake)
    assert res["capacity"] == limit and res["first_failing"] == limit + 1
    assert seen[:4] == [5, 10, 20, 40]
    again = capacity_search(cfg, tmp_path, Budget(0.01, 0.01), start=5, resolution=0.0, run=fake)
    assert again["capacity"] == limit and len(seen) == len(set(seen))  # resumed: nothing measured twice


def test_probing_never_builds_the_world(monkeypatch, tmp_path, tok):
    import knowpack.world
    import knowpack.world.build
    from knowpack import runs
    from knowpack.facts import Fact, FactSet
    from knowpack.models import tiny_model
    from knowpack.probe import ProbeSettings

    def refuse(*a, **k):
        raise AssertionError("a probe must not build the embedded world")

    empty = tmp_path / "no-world-shipped"
    empty.mkdir()
    looked = []

    def no_shipped_world():
        looked.append(empty)
        return empty

    monkeypatch.setattr(knowpack.world, "build_world", refuse)
    monkeypatch.setattr(knowpack.world.build, "build_world", refuse)
    monkeypatch.setattr(knowpack.world, "default_world_dir", no_shipped_world)
    monkeypatch.setattr(knowpack.world.build, "default_world_dir", no_shipped_world)
    # no world built into the default cache either, so asking for the world here would build one
    monkeypatch.setenv("KNOWPACK_CACHE", str(tmp_path / "knowpack-cache"))

    facts = FactSet(Fact(id=f"f{i}", question=f"Where is thing {i}?", answers=(f"Place{i}",), relation="place")
                    for i in range(4))
    cfg = RunConfig(cache_dir=str(tmp_path / "cache"),
                    probe=ProbeSettings(n_prompts=2, shots=1, n_samples=1, max_new_tokens=3, batch_size=8))
    model = tiny_model("llama", seed=0, vocab_size=len(tok))
    rows, summary = runs.cached_probe(cfg, model, tok, facts, progress=False)
    assert [r["id"] for r in rows] == [f.id for f in facts] and summary
    assert looked  # the shipped-cache lookup ran, against the empty world directory
    assert runs.shipped_probe_caches() == []
    # the second call is served from the run's own cache, still without building anything
    again, _ = runs.cached_probe(cfg, model, tok, facts, progress=False)
    assert again == rows
