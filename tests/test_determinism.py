"""The same config and seed give byte-identical probe.jsonl, train.jsonl and metrics.json on a CPU.

One run happens in this process, the other in a fresh interpreter with another hash seed (so set
and dict orders cannot leak into results), each starting from an empty cache so that the probe is
really recomputed. Wall-clock times live in timings.json, never in these files.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from knowpack.cli import main
from test_run import write_inputs

SAME = ["probe_before.jsonl", "probe_before_summary.json", "train.jsonl", "composition.json", "probe_after.jsonl",
        "train_log.jsonl", "metrics.json", "config.yaml", "adapter/adapter_model.safetensors"]


def test_run_twice_gives_identical_files(tmp_path, tiny_dir):
    cfg = write_inputs(tmp_path, tiny_dir)  # sampling on (n_samples 2), LoRA dropout 0.1: seeds matter
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["-q", "run", str(cfg), "--out", str(first), "--no-progress"]) == 0
    (tmp_path / "cache").rename(tmp_path / "cache-first")  # the second run probes and scores afresh
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    res = subprocess.run([sys.executable, "-m", "knowpack.cli", "-q", "run", str(cfg), "--out", str(second),
                          "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "cache" / "probe").exists()  # recomputed, not read from the first run's cache
    for name in SAME:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_probe_twice_gives_identical_files(tmp_path, tiny_dir):
    cfg = write_inputs(tmp_path, tiny_dir)
    facts = cfg.parent / "facts.jsonl"
    outs = []
    for i in range(2):
        out = tmp_path / f"probe{i}"
        assert main(["-q", "probe", "--model", str(tiny_dir), "--facts", str(facts), "--out", str(out), "--device",
                     "cpu", "--cache-dir", str(tmp_path / f"cache{i}"), "--no-progress", "n_prompts=3", "shots=2",
                     "n_samples=4", "max_new_tokens=4", "keep_samples=true"]) == 0
        outs.append(out)
    for name in ("probe.jsonl", "summary.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
