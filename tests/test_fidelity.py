"""bench/fidelity.py: the verdict rule and the findings table, on records whose answer is known."""

from __future__ import annotations

import pytest

from conftest import bench_module


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
    assert verdicts["hk_lowers_neg"] == ["holds"]  # seed 3 of +10 HK missed the target and is left out
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


@pytest.mark.parametrize("argv,seeds,methods,fixed", [
    (["--reduced"], 1, ["lora", "loki"], True),
    (["--reduced", "--seeds", "3"], 3, ["lora", "loki"], True),
    (["--fixed-rates", "--methods", "lora", "dora", "loki"], 3, ["lora", "loki"], True),  # dora has no rate
    ([], 3, ["lora", "dora", "pissa", "loki"], False),
])
def test_the_forms_of_the_run(fid, monkeypatch, tmp_path, capsys, argv, seeds, methods, fixed):
    seen = {}

    def run_all(args, say):
        seen.update(seeds=args.seeds, methods=args.methods, fixed=args.reduced or args.fixed_rates)
        raise _Ran

    monkeypatch.setattr(fid, "run_all", run_all)
    with pytest.raises(_Ran):
        fid.main([*argv, "--out", str(tmp_path)])
    assert seen == {"seeds": seeds, "methods": methods, "fixed": fixed}
    if "dora" in argv:
        assert "dora left out" in capsys.readouterr().out


def test_fixed_rates_without_a_rate_for_any_method_is_refused(fid, tmp_path):
    with pytest.raises(SystemExit) as info:
        fid.main(["--fixed-rates", "--methods", "dora", "pissa", "--out", str(tmp_path)])
    assert info.value.code == 2
