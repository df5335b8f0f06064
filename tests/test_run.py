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
    # few-shot generalisation: the held-out paraphrase asked after each of the fact's 2 probe prompts
    few = metrics["generalisation"]["few_shot"]
    assert few["denominator"] == 3 * 2 and few["mode"] == "few-shot" and h["generalisation_few_shot"] is not None
    assert h["ci95"]["generalisation_few_shot"] is not None and h["ci95"]["reliability_zero_shot"] is not None
    # one zero-shot reliability definition: the training summary and metrics.json agree
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["reliability_zero_shot"] == metrics["reliability"]["zero_shot"]["value"]
    assert metrics["answer_collapse"]["after"]["exploded_share"] == 0.004  # the paper's scale
    after = [json.loads(line) for line in (out / "probe_after.jsonl").read_text().splitlines()]
    assert len(after) == 8 and {"id", "category", "p_greedy", "greedy_answers", "refused"} <= set(after[0])
    train_rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert sorted(r["kind"] for r in train_rows) == ["paraphrase"] * 3 + ["unknown"] * 3
    text = capsys.readouterr().out
    assert "reliability" in text and "report.md" in text
    # a second run with the same config reuses the probe and benchmark caches
    assert any((tmp_path / "cache" / "probe").iterdir()) and any((tmp_path / "cache" / "bench").iterdir())


def _fake_metrics(n, reliability=1.0, neg=0.0, drops=None):
    drops = {"mc": 0.0} if drops is None else drops
    return {"headline": {"n_trained": n, "reliability": reliability, "negative_shift": neg,
                         "mean_benchmark_drop_relative": sum(drops.values()) / max(1, len(drops)),
                         "bits_per_param": 0.1},
            "benchmarks": {k: {"before": 0.8, "after": 0.8 * (1 - v), "absolute": 0.8 * v, "relative": v}
                           for k, v in drops.items()}}


def test_capacity_search_bisects_to_the_largest_passing_size(tmp_path):
    cfg = RunConfig()
    limit = 37  # sizes above this fail the reliability threshold
    seen = []

    def fake(c, d):
        n = c.compose.n_unknown
        seen.append(n)
        return _fake_metrics(n, 1.0 if n <= limit else 0.5)

    res = capacity_search(cfg, tmp_path, Budget(0.01, 0.01), start=5, resolution=0.0, run=fake, pool=500)
    assert res["capacity"] == limit and res["first_failing"] == limit + 1 and res["monotone"]
    assert seen[:4] == [5, 10, 20, 40]
    assert [r["n_unknown"] for r in res["tried"]] == sorted(seen)  # every size tried is listed with its verdict
    again = capacity_search(cfg, tmp_path, Budget(0.01, 0.01), start=5, resolution=0.0, run=fake, pool=500)
    assert again["capacity"] == limit and len(seen) == len(set(seen))  # resumed: nothing measured twice


def test_capacity_rejudges_stored_runs_under_the_current_budget(tmp_path):
    """Budget 0.05 then 0.01 in one directory gives what fresh directories give (stored figures, not verdicts)."""
    cfg = RunConfig()

    def fake(c, d):
        n = c.compose.n_unknown
        return _fake_metrics(n, neg=n / 1000)  # negative shift grows with n: 1% at 10, 5% at 50

    loose = capacity_search(cfg, tmp_path / "same", Budget(0.05, 0.01), start=10, resolution=0.0, run=fake, pool=200)
    tight = capacity_search(cfg, tmp_path / "same", Budget(0.01, 0.01), start=10, resolution=0.0, run=fake, pool=200)
    fresh_loose = capacity_search(cfg, tmp_path / "a", Budget(0.05, 0.01), start=10, resolution=0.0, run=fake,
                                  pool=200)
    fresh_tight = capacity_search(cfg, tmp_path / "b", Budget(0.01, 0.01), start=10, resolution=0.0, run=fake,
                                  pool=200)
    assert (loose["capacity"], tight["capacity"]) == (fresh_loose["capacity"], fresh_tight["capacity"]) == (50, 10)


def test_capacity_tries_max_n_and_caps_at_the_unknown_pool(tmp_path):
    seen = []

    def fake(c, d):
        seen.append(c.compose.n_unknown)
        return _fake_metrics(c.compose.n_unknown)

    res = capacity_search(RunConfig(), tmp_path / "max", Budget(0.01, 0.01), start=10, max_n=60, run=fake, pool=500)
    assert seen == [10, 20, 40, 60] and res["capacity"] == 60 and res["capped_by"] == "max_n" and res["reached_cap"]
    seen.clear()
    res = capacity_search(RunConfig(), tmp_path / "pool", Budget(0.01, 0.01), start=10, run=fake, pool=33)
    assert seen == [10, 20, 33] and res["capacity"] == 33 and res["capped_by"] == "unknown pool"


def test_capacity_budget_is_per_benchmark_and_never_counts_a_missing_figure_as_zero(tmp_path):
    import pytest

    from knowpack.errors import KnowpackError

    # a gain on one benchmark must not hide damage on another (mean drop 0, one benchmark -10%)
    hidden = capacity_search(RunConfig(), tmp_path / "gain", Budget(0.01, 0.01), start=10, max_n=10, pool=50,
                             run=lambda c, d: _fake_metrics(10, drops={"mc": 0.10, "qa": -0.10}))
    assert hidden["capacity"] == 0 and "mc drop" in hidden["tried"][0]["reasons"][0]
    no_bench = lambda c, d: _fake_metrics(c.compose.n_unknown, drops={})  # noqa: E731
    with pytest.raises(KnowpackError, match="no benchmark was measured.*--no-benchmark-budget"):
        capacity_search(RunConfig(), tmp_path / "none", Budget(0.01, 0.01), start=10, max_n=10, pool=50, run=no_bench)
    ok = capacity_search(RunConfig(), tmp_path / "explicit", Budget(0.01, None), start=10, max_n=10, pool=50,
                         run=no_bench)
    assert ok["capacity"] == 10


def test_capacity_reports_a_non_monotone_result(tmp_path):
    fails_at_20 = lambda c, d: _fake_metrics(c.compose.n_unknown, 0.5 if c.compose.n_unknown == 20 else 1.0)  # noqa
    res = capacity_search(RunConfig(), tmp_path, Budget(0.01, 0.01), start=10, max_n=40, resolution=0.0, pool=100,
                          run=fails_at_20)
    assert res["first_failing"] == 20 and res["capacity"] < 20
    # a later search of the same directory that measures 40 sees it pass above the failure
    res = capacity_search(RunConfig(), tmp_path, Budget(0.01, 0.01), start=40, max_n=40, pool=100, run=fails_at_20)
    assert not res["monotone"] and res["passing_above_first_failure"] == [40] and res["capacity"] < 20


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


def test_an_untrained_run_shows_no_shift_no_drop_and_full_locality(tmp_path, tiny_dir):
    """The base model evaluated as a trained run (zero training steps): common random numbers make the
    after-probe equal the before-probe, so both shifts are exactly 0, locality 1 and every benchmark drop 0;
    the noise floor (another sampling seed) is reported beside the shift."""
    from knowpack.runs import full_run

    cfg = load_config(RunConfig, write_inputs(tmp_path, tiny_dir, n=40),
                      ["train.epochs=0", "compose.mixing=none", "compose.k=0", "compose.eval_size=30",
                       "probe.n_samples=6", "probe.n_prompts=3", "probe.batch_size=7"])
    m = full_run(cfg, tmp_path / "run0", progress=False)
    h = m["headline"]
    assert m["run"]["steps"] == 0
    assert h["positive_shift"] == 0 and h["negative_shift"] == 0 and h["locality"] == 1.0
    assert all(v == 0 for v in h["benchmark_drop"].values()) and h["benchmark_drop"]
    assert m["knowledge_shift"]["noise_floor"]["denominator"] == 30
    assert h["positive_shift_floor"] is not None and h["negative_shift_floor"] is not None
    assert h["ci95"]["negative_shift"][0] == 0.0 and h["ci95"]["locality"][1] == 1.0
    before = {r["id"]: r for r in map(json.loads, (tmp_path / "run0" / "probe_before.jsonl").read_text().splitlines())}
    after = [json.loads(x) for x in (tmp_path / "run0" / "probe_after.jsonl").read_text().splitlines()]
    assert after and all(r == before[r["id"]] for r in after)


def test_one_refusal_detector_everywhere(tmp_path, tiny_dir, monkeypatch):
    """The probe's refusal patterns decide refusals in the probe, the benchmarks and the zero-shot reliability
    (before: the benchmarks used the default patterns whatever probe.refusal_patterns said)."""
    from knowpack.evaluate import stage
    from knowpack.facts import Fact
    from knowpack.runs import full_run

    bench = stage.Benchmarks(mc={}, qa={"skill": [{"question": "q?", "answers": ["4"]}]},
                             refusal=[Fact("r", "who?", ("I don't know",))])
    monkeypatch.setattr(stage, "answer_zero_shot", lambda m, t, qs, **k: ["4, though I would rather pass"] * len(qs))
    mine = stage.score_benchmarks(None, None, bench, stage.EvalSettings(), refusal_patterns=("rather pass",))
    default = stage.score_benchmarks(None, None, bench, stage.EvalSettings())
    assert mine["skill"]["accuracy"] == 0.0 and mine["_refusal_facts"]["rate"] == 1.0
    assert default["skill"]["accuracy"] == 1.0 and default["_refusal_facts"]["rate"] == 0.0
    monkeypatch.undo()
    seen = []
    real = stage.score_benchmarks
    monkeypatch.setattr(stage, "score_benchmarks", lambda *a, **k: seen.append(k["refusal_patterns"]) or real(*a, **k))
    cfg = load_config(RunConfig, write_inputs(tmp_path, tiny_dir),
                      ["train.epochs=1", "compose.mixing=none", "compose.k=0", "probe.refusal_patterns=[no idea]"])
    full_run(cfg, tmp_path / "run", progress=False)
    assert seen and all(p == ("no idea",) for p in seen)  # before (cached scoring) and after training
