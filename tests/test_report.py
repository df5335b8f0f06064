"""Reports from results files only: tables hold the expected numbers, plots are real PNGs."""

from __future__ import annotations

import json

import pytest
import yaml

from knowpack.evaluate.metrics import compute_metrics
from knowpack.facts import Fact
from knowpack.io import write_json
from knowpack.report import paper, plots, read_sweep_records, tables, write_run_report, write_sweep_report

PNG = b"\x89PNG\r\n\x1a\n"


def _row(fid: str, cat: str, answers: list[str], p: float = 0.0) -> dict:
    return {"id": fid, "category": cat, "p_greedy": p, "p_sample": 0.0, "greedy_answers": answers,
            "greedy_correct": [p > 0] * len(answers), "refused": [a == "I don't know" for a in answers]}


def metrics(reliability: float, negative: int, drop: float) -> dict:
    """A real compute_metrics record: 2 trained facts with P_greedy = `reliability`, 10 evaluation
    facts of which `negative` fall from HighlyKnown to Unknown and one rises from Unknown."""
    facts = [Fact(f"t{i}", f"q{i}?", ("a",)) for i in range(2)] + [Fact(f"e{i}", f"e{i}?", ("b",)) for i in range(10)]
    before = [_row(f"t{i}", "Unknown", ["x", "x"]) for i in range(2)]
    after = [_row(f"t{i}", "MaybeKnown", ["a", "x"], reliability) for i in range(2)]
    for i in range(10):
        cb = "HighlyKnown" if i < 8 else "Unknown"
        ca = "Unknown" if i < negative else ("HighlyKnown" if i == 9 else cb)
        before.append(_row(f"e{i}", cb, ["paris", "I don't know"]))
        after.append(_row(f"e{i}", ca, ["paris", "rome" if ca != cb else "I don't know"]))
    return compute_metrics(facts, before, after, ["t0", "t1"], [f"e{i}" for i in range(10)],
                           benchmarks_before={"mc": 0.5}, benchmarks_after={"mc": 0.5 - drop})


def record(method: str, n: int, mixing: str, k: int, seed: int, m: dict) -> dict:
    return {"point": f"{method}-{n}-{mixing}-{k}-{seed}", "metrics": m,
            "config": {"seed": seed, "compose": {"n_unknown": n, "mixing": mixing, "k": k}, "train": {"method": method}}}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return [record("lora", 100, "none", 0, 0, metrics(0.8, 1, 0.1)),
            record("lora", 100, "none", 0, 1, metrics(1.0, 1, 0.1)),
            record("lora", 10, "highly_known", 1, 0, metrics(0.5, 0, 0.0)),
            record("loki", 10, "none", 0, 0, metrics(0.5, 2, 0.05))]


def test_table2_mean_std_over_seeds_and_paper_values(records):
    t = tables.table2(records)
    assert "0.900 [0.000, 1.000] (n=2) [paper 0.98]" in t  # seeds 0.8 and 1.0; paper Table 2, 100 UK, unmixed
    assert "0.500 [0.500, 0.500] [paper 1.00]" in t  # one seed: the run's own interval (bootstrap over facts)
    assert "**method: loki**" in t and "| 10 | 0.500 [0.500, 0.500] |" in t  # no paper cell for LoKI
    assert "(n=" in t  # seeds differ between cells, so each cell says how many


def test_table3_and_damage_tables(records):
    t = tables.table3(records)
    assert "+0.100 [+0.100, +0.100] / −0.100 [0.100, 0.100]" in t  # 1 of 10 up, 1 of 10 down, both seeds
    assert "+0.100 [+0.018, +0.404] / −0.200 [0.057, 0.510]" in t  # loki: two fall; Wilson over 10 facts
    b = tables.benchmark_table(records)
    assert ("| lora, 100 UK, none | 2 | mc | 0.500 [0.500, 0.500] | 0.400 [0.400, 0.400] | +0.100 [+0.100, +0.100] "
            "| +20.00 [+20.00, +20.00] | 16.11% |") in b
    assert "| loki, 10 UK, none | 1 | mc | 0.500 | 0.450 | +0.050 | +10.00 | 0.34% |" in b
    r = tables.refusal_table(records)
    # before: 1 refusal in 2 answers per fact; after: only unchanged facts still refuse
    assert "| lora, 100 UK, none | 2 | 0.500 [0.500, 0.500] | 0.400 [0.400, 0.400] | -0.100 [-0.100, -0.100] | 1 (0.00%) |" in r
    c = tables.collapse_table(records)
    assert "| loki, 10 UK, none | 1 | 1.0 | 2.0 |" in c
    m = tables.matched_reliability_table(records, threshold=0.95)
    assert "| lora | 1 | 100 | 0.100 | 20.00 |" in m and "| loki | 0 |" in m


def test_paper_lookup():
    assert paper.kp_reliability(3000, "highly_known", 10) == 0.48
    assert paper.kp_reliability(100, "paraphrase", 0) == paper.kp_reliability(100, "none", 0) == 0.98
    assert paper.kp_reliability(7, "none", 0) is None
    assert paper.loki_capability_loss("loki", 20) == 0.93 and paper.loki_capability_loss("pissa") == 48.93
    assert paper.KP_TABLE4[None]["refused"] == 3189
    assert all(s["source"] for s in paper.sources())


def test_sweep_report_skips_torn_line_and_writes_pngs(tmp_path, records):
    lines = [json.dumps(r) for r in records] + [json.dumps({"point": "failed", "config": {}, "error": "boom"})]
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n" + '{"point": "torn", "metrics": {"hea')
    got, skipped = read_sweep_records(tmp_path)
    assert len(got) == 4 and skipped == 1
    path = write_sweep_report(tmp_path)
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert "4 finished runs in 3 conditions" in text and "1 record(s) without metrics were skipped" in text
    assert "0.900 [0.000, 1.000] (n=2) [paper 0.98]" in text and "Table 3" in text and "[paper +0.067 / −0.172]" in text
    for name in ("reliability.png", "damage.png", "matched_reliability.png", "transitions.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
        assert f"![{name}]({name})" in text


def test_later_line_for_a_point_wins(tmp_path, records):
    again = dict(records[0], metrics=metrics(0.0, 0, 0.0))
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*records, again]))
    got, _ = read_sweep_records(tmp_path)
    assert len(got) == 4
    assert [r["metrics"]["headline"]["reliability"] for r in got if r["point"] == records[0]["point"]] == [0.0]


def test_run_report_has_every_definition_and_a_heatmap(tmp_path, records):
    write_json(tmp_path / "metrics.json", records[0]["metrics"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(records[0]["config"]))
    path = write_run_report(tmp_path)
    text = path.read_text()
    assert "| method | lora |" in text and "| n_unknown | 100 |" in text
    assert "Paper (Table 2, LoRA" in text and "0.98" in text
    assert "| **HK** | 7 | 0 | 0 | 1 | 8 |" in text  # 7 stay, 1 falls to Unknown
    for section in ("Few-shot probe", "Knowledge shift", "Answer collapse", "Refusal rate", "Unchanged answers", "mc"):
        assert section in text
    assert text.count("*Definition:*") >= 7 and text.count("*Denominator:*") >= 7
    data = (tmp_path / "transitions.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000
    with pytest.raises(FileNotFoundError, match="evaluate the run first"):
        write_run_report(tmp_path / "missing")


def test_plots_handle_single_points_and_no_data(tmp_path, records):
    one = [records[2]]
    assert plots.plot_reliability(one, tmp_path / "r.png").read_bytes().startswith(PNG)
    no_bench = [dict(records[2], metrics={"headline": {"reliability": 0.5, "negative_shift": 0.0}})]
    assert plots.plot_damage(no_bench, tmp_path / "d.png").read_bytes().startswith(PNG)
    assert plots.plot_reliability([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    assert plots.plot_transitions([], tmp_path / "t.png") is None


def test_flat_configs_are_read_too():
    flat = {"config": {"method": "dora", "n_unknown": 5, "mixing": "paraphrase", "k": 1, "seed": 3}, "metrics": {}}
    assert tables.condition(flat) == tables.Condition("dora", 5, "paraphrase", 1)
