"""bench/fidelity.py: the verdict rule and the findings table, on records whose answer is known."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import bench_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fid():
    with bench_module("fidelity") as module:
        yield module


def test_verdict_reads_the_interval_over_seeds(fid):
    assert fid.verdict([0.10, 0.12, 0.11])[0] == "holds"
    assert fid.verdict([-0.10, -0.12, -0.11])[0] == "does not hold"
    assert fid.verdict([0.10, -0.12, 0.02])[0] == "within noise"
    assert fid.verdict([-0.10, -0.12, -0.11], expect_positive=False)[0] == "holds"
    assert fid.verdict([0.3])[0].startswith("same direction, one seed")
    assert fid.verdict([0.0])[0].startswith("no difference, one seed")
    assert fid.verdict([])[0] == "not measured"


def _rec(pid: str, seed: int, **h) -> dict:
    base = {"reliability_zero_shot": 0.97, "negative_shift": 0.2, "positive_shift": 0.05,
            "generalisation_zero_shot": 0.5, "distinct_answers_before": 90, "distinct_answers_after": 60,
            "refusal_facts_before": 0.9, "refusal_facts_after": 0.4, "refusal_before": 0.1, "refusal_after": 0.2, "mean_benchmark_drop_relative": 0.1}
    base.update(h)
    return {"point": f"{pid}-seed={seed}", "overrides": {"compare_point": pid, "seed": seed},
            "metrics": {"headline": base}}


def _strategy(loss: float, correct: list[int]) -> dict:
    return {"capability_loss_pct": loss, "correct": {"mc": correct}}


def test_findings_judge_each_paper_claim_on_the_seeds_that_reached_the_target(fid):
    rows = [{"id": "p", "label": "lora r=1", "reached_target": True},
            {"id": "hk", "label": "lora r=1, +10 highly_known", "reached_target": True},
            {"id": "hk1", "label": "lora r=1, +1 highly_known", "reached_target": False},
            {"id": "pa", "label": "lora r=1, +10 paraphrase", "reached_target": True},
            {"id": "lk", "label": "loki q=10", "reached_target": True},
            {"id": "rn", "label": "loki q=10 random rows (LoKI on random rows)", "reached_target": True},
            {"id": "pm", "label": "lora r=8 (parameter-matched LoRA)", "reached_target": True}]
    recs = []
    for s in range(3):
        recs += [_rec("p", s, negative_shift=0.30 + 0.01 * s, positive_shift=0.05),
                 _rec("hk", s, negative_shift=0.20 + 0.01 * s),
                 _rec("pa", s, generalisation_zero_shot=0.5 - 0.2 * (s == 1)),  # no gain: within noise
                 _rec("lk", s, mean_benchmark_drop_relative=0.02),
                 _rec("rn", s, mean_benchmark_drop_relative=0.05 + 0.001 * s),
                 _rec("pm", s, mean_benchmark_drop_relative=0.01 + 0.001 * s)]  # beats LoKI
    recs.append(_rec("hk", 3, reliability_zero_shot=0.5, negative_shift=0.99))  # missed: never counted
    recs += [_rec("hk1", s, reliability_zero_shot=0.6, negative_shift=0.01) for s in range(3)]  # missed on every seed
    curve = [{"overrides": {"n_unknown": n, "seed": s}, "metrics": {"headline": {"reliability_zero_shot": r - 0.01 * s}}}
             for n, r in ((10, 1.0), (500, 0.6)) for s in range(3)]
    hi, lo = _strategy(30.0, [0] * 8 + [1] * 2), _strategy(5.0, [1] * 9 + [0])
    results = {"compare": {"rows": rows}, "curve": curve,
               "ablation": {"q": 1.0, "strategies": {"layer_balanced_highest": hi, "layer_balanced_lowest": lo,
                                                     "global_lowest": hi}}}
    by_key: dict[str, list[dict]] = {}
    for r in fid.findings(results, recs, target=0.95):
        by_key.setdefault(r["key"], []).append(r)
    verdicts = {k: [r["verdict"] for r in v] for k, v in by_key.items()}
    assert verdicts["capacity"] == ["holds"]
    assert verdicts["neg_vs_pos"] == ["holds"]
    # one row per k, in k's order; seed 3 of +10 HK missed the target and is left out, +1 HK missed on all
    assert verdicts["hk_lowers_neg"] == ["not measured (the +1 HK point missed the target on some seed)", "holds"]
    assert [r["finding"] for r in by_key["hk_lowers_neg"]][0].startswith("+1 HighlyKnown")
    assert verdicts["para_generalises"] == ["within noise"]
    assert verdicts["collapse"] == ["holds"] and verdicts["refusals"] == ["holds"]
    loki_vs = {r["finding"]: r["verdict"] for r in by_key["loki_vs_lora"]}
    assert loki_vs["LoKI damages general capability less than lora r=1"] == "holds"
    assert loki_vs["LoKI damages general capability less than lora r=8 (parameter-matched LoRA)"] == "does not hold"
    assert verdicts["lowest_vs_random"] == ["holds"]
    assert verdicts["zero_high_vs_low"][0].startswith("holds")
    assert verdicts["balanced_vs_global"][0].startswith("holds")
    assert "| finding | paper |" in fid.table_text([r for v in by_key.values() for r in v])


class _Ran(Exception):
    pass


def _config_with_rates(tmp_path, rates: dict) -> str:
    """The shipped fidelity config with only `rates` as its fixed rates."""
    import yaml

    data = yaml.safe_load((ROOT / "configs" / "fidelity-world.yaml").read_text())
    data["rates"] = rates
    path = tmp_path / "fidelity.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("argv,seeds,methods,fixed", [
    (["--reduced"], 1, ["lora", "loki"], True),
    (["--reduced", "--seeds", "3"], 3, ["lora", "loki"], True),
    (["--fixed-rates", "--methods", "lora", "dora", "loki"], 3, ["lora", "loki"], True),  # dora has no rate here
    ([], 3, ["lora", "dora", "pissa", "loki"], False),
])
def test_the_forms_of_the_run(fid, monkeypatch, tmp_path, capsys, argv, seeds, methods, fixed):
    seen = {}
    config = _config_with_rates(tmp_path, {"lora": 3e-3, "loki": 1e-2})

    def run_all(args, say):
        seen.update(seeds=args.seeds, methods=args.methods, fixed=args.reduced or args.fixed_rates)
        raise _Ran

    monkeypatch.setattr(fid, "run_all", run_all)
    with pytest.raises(_Ran):
        fid.main([*argv, "--config", config, "--out", str(tmp_path / "out")])
    assert seen == {"seeds": seeds, "methods": methods, "fixed": fixed}
    if "dora" in argv:
        assert "dora left out" in capsys.readouterr().out


def test_fixed_rates_without_a_rate_for_any_method_is_refused(fid, tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "run_all", lambda args, say: pytest.fail("ran without a rate"))
    config = _config_with_rates(tmp_path, {"lora": 3e-3, "loki": 1e-2})
    with pytest.raises(SystemExit) as info:
        fid.main(["--fixed-rates", "--config", config, "--methods", "dora", "pissa", "--out", str(tmp_path / "out")])
    assert info.value.code == 2


def test_the_shipped_config_fixes_a_rate_for_every_compared_method():
    import yaml

    rates = yaml.safe_load((ROOT / "configs" / "fidelity-world.yaml").read_text())["rates"]
    assert set(rates) == {"lora", "dora", "pissa", "loki"} and all(r > 0 for r in rates.values())


def test_the_ablation_is_reused_only_when_it_ran_with_the_same_settings(fid, tmp_path):
    import json

    from knowpack.config import load_config
    from knowpack.runs import RunConfig

    calls = []

    def run(cfg, out, *, q, known, progress):  # writes its result as run_ablation does
        calls.append((q, known))
        out.mkdir(parents=True, exist_ok=True)
        result = {"q": q, "strategies": {"random": _strategy(1.0, [1, 0])}}
        (out / "ablation.json").write_text(json.dumps(result))
        return result

    cfg = load_config(RunConfig, data={"model": "world", "facts": "world"})
    said: list[str] = []
    first = fid.cached_ablation(cfg, tmp_path, 1.0, 300, said.append, run=run)
    again = fid.cached_ablation(cfg, tmp_path, 1.0, 300, said.append, run=run)
    assert calls == [(1.0, 300)] and again == first and any("reusing" in s for s in said)
    fid.cached_ablation(cfg, tmp_path, 5.0, 300, said.append, run=run)  # another q: run again
    other = load_config(RunConfig, data={"model": "world", "facts": "world", "seed": 1})
    fid.cached_ablation(other, tmp_path, 5.0, 300, said.append, run=run)  # other settings: run again
    (tmp_path / fid.ABLATION_KEY).unlink()  # cut short before its key was written: run again
    fid.cached_ablation(other, tmp_path, 5.0, 300, said.append, run=run)
    assert calls == [(1.0, 300), (5.0, 300), (5.0, 300), (5.0, 300)]


def test_the_capacity_curve_gives_every_size_a_budget_it_can_learn_in(fid):
    # 40 passes over 10 facts in batches of 16 would be 40 steps; the floor is the comparison's cap
    assert fid.curve_steps(10, 16, 40, 1500) == 1500
    assert fid.curve_steps(1000, 16, 40, 1500) == 40 * 63  # beyond the floor the budget grows with the facts
    assert fid.curve_steps(17, 16, 40, 0) == 80


def test_the_curve_points_train_to_the_target_within_their_budget(fid, tmp_path, monkeypatch):
    import argparse

    import knowpack.ablate
    import knowpack.capacity
    import knowpack.compare
    import knowpack.sweep

    ran = {}
    monkeypatch.setattr(knowpack.compare, "run_compare", lambda *a, **k: {"rows": []})
    monkeypatch.setattr(knowpack.ablate, "run_ablation", lambda *a, **k: {"strategies": {}})
    monkeypatch.setattr(knowpack.sweep, "run_points", lambda points, out, **k: ran.setdefault("points", points))
    monkeypatch.setattr(knowpack.capacity, "unknown_pool", lambda cfg: 1200)
    args = argparse.Namespace(out=str(tmp_path / "out"), config=_config_with_rates(tmp_path, {"lora": 3e-3}), seeds=2,
                              target=0.9, max_steps=600, methods=["lora"], lrs=None, sizes=[10, 1000],
                              curve_epochs=40, curve_min_steps=1500, zero_q=1.0, known=300, reduced=False,
                              fixed_rates=True, override=[])
    fid.run_all(args, lambda s: None)
    points = ran["points"]
    # seed-major: a stopped run leaves whole curves for the seeds it finished
    assert [p.id for p in points] == ["n=10-seed=0", "n=1000-seed=0", "n=10-seed=1", "n=1000-seed=1"]
    for p in points:
        cfg, n = p.config, p.overrides["n_unknown"]
        assert cfg.compose.n_unknown == n and cfg.seed == p.overrides["seed"] and cfg.train.method == "lora"
        assert cfg.train.max_steps == p.overrides["max_steps"] == (1500 if n == 10 else 40 * 63)
        assert cfg.train.early_stopping.enabled and cfg.train.early_stopping.reliability == 0.9
        assert cfg.train.epochs >= 10 ** 6  # the step cap, not an epoch count, ends a run that misses the target


def test_the_curve_table_gives_each_size_its_cap_steps_and_the_seeds_that_reached_the_target(fid):
    def rec(n, seed, rel, steps, cap):
        return {"overrides": {"n_unknown": n, "seed": seed, "max_steps": cap},
                "metrics": {"headline": {"reliability_zero_shot": rel, "negative_shift": 0.4,
                                         "mean_benchmark_drop_relative": 0.5}, "run": {"steps": steps}}}

    curve = [rec(10, 0, 1.0, 40, 1500), rec(10, 1, 0.96, 60, 1500),
             rec(1000, 0, 0.97, 2400, 2520), rec(1000, 1, 0.62, 2520, 2520)]
    text = fid.curve_table(curve, 0.95)
    rows = [line for line in text.splitlines() if line.startswith("| 1")]
    assert rows[0].startswith("| 10 | 1500 | 50 (40-60) | 2/2 | 98.0% [")
    assert rows[1].startswith("| 1,000 | 2520 | 2,460 (2,400-2,520) | 1/2 | 79.5% [")


def test_curve_sizes_beyond_the_unknown_pool_become_the_whole_pool(fid):
    # the shipped world has 876 Unknown facts: a 1,000-fact point cannot be composed (it failed a run)
    assert fid.fit_sizes([10, 500, 1000], 876) == ([10, 500, 876], [1000])
    assert fid.fit_sizes([10, 900, 1000], 876) == ([10, 876], [900, 1000])
    assert fid.fit_sizes([10, 50], 876) == ([10, 50], [])

