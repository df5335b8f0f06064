"""Sweeps: grid validation, one line per finished point, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from knowpack.errors import ConfigError
from knowpack.sweep import expand_grid, load_sweep, read_results, run_sweep

SWEEP_YAML = """
model: world
compose:
  n_unknown: 5
grid:
  compose.n_unknown: [1, 2, 3]
  compose.mixing: [none, highly_known]
  seed: [0, 1]
"""


def test_grid_expands_and_validates_every_point(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(SWEEP_YAML)
    base, points = load_sweep(cfg)
    assert len(points) == 12 and len({p.id for p in points}) == 12
    assert {p.config.compose.n_unknown for p in points} == {1, 2, 3}
    assert base.compose.n_unknown == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  compose.n_unknwn: [1]\n  train.method: [lora, nope]\n")
    with pytest.raises(ConfigError) as exc:
        load_sweep(bad)
    text = str(exc.value)
    assert "n_unknwn" in text and "nope" in text
    assert expand_grid({"a": [1, 2], "b": [3]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]


def test_explicit_points_cross_the_grid(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("grid:\n  seed: [0, 1]\npoints:\n  - {compose.mixing: none}\n"
                   "  - {compose.mixing: paraphrase, compose.k: 10}\n")
    _, points = load_sweep(cfg)
    got = sorted((p.config.seed, p.config.compose.mixing, p.config.compose.k) for p in points)
    assert got == [(0, "none", 0), (0, "paraphrase", 10), (1, "none", 0), (1, "paraphrase", 10)]


def test_torn_last_line_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"point": "a"}\n{"point": "b"}\n{"poi')
    assert [r["point"] for r in read_results(path)] == ["a", "b"]
    read_results(path, repair=True)
    assert path.read_text() == '{"point": "a"}\n{"point": "b"}\n'


def test_finished_points_are_not_rerun(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(SWEEP_YAML)
    calls = []

    def fake(config, run_dir):
        calls.append(str(run_dir))
        return {"metrics": {"n": config.compose.n_unknown}}

    first = run_sweep(cfg, tmp_path / "sw", run_point=fake)
    assert len(first) == 12 and len(calls) == 12
    again = run_sweep(cfg, tmp_path / "sw", run_point=fake)
    assert len(again) == 12 and len(calls) == 12


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from knowpack.sweep import run_sweep

    def slow(config, run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        time.sleep(0.15)
        return {"metrics": {"n_unknown": config.compose.n_unknown, "seed": config.seed}, "pad": "x" * 20000}

    run_sweep(sys.argv[1], sys.argv[2], run_point=slow)
""")


def test_sweep_killed_twice_resumes_with_exactly_one_line_per_point(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(SWEEP_YAML)
    script = tmp_path / "sweep_script.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "sw"
    rng = random.Random(7)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kills = 0
    results = out / "results.jsonl"
    for _ in range(2):
        before = len(results.read_bytes().splitlines()) if results.exists() else 0
        proc = subprocess.Popen([sys.executable, str(script), str(cfg), str(out)], env=env)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:  # wait for one more finished point
            if results.exists() and len(results.read_bytes().splitlines()) > before:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))  # then kill at a random moment: mid-run or mid-append
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 2
    done = subprocess.run([sys.executable, str(script), str(cfg), str(out)], env=env, timeout=120)
    assert done.returncode == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    points = [r["point"] for r in records]
    assert len(points) == 12 and len(set(points)) == 12
