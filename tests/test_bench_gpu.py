"""bench/gpu.py: its smoke mode runs every figure's code on tiny shapes on a CPU; without CUDA it refuses."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import bench_module


@pytest.fixture(scope="module")
def gpu_bench():
    with bench_module("gpu") as module:
        yield module


def test_smoke_mode_prints_every_figure(gpu_bench, capsys):
    threads = torch.get_num_threads()
    assert gpu_bench.main(["--device", "cpu", "--tiny"]) == 0
    assert torch.get_num_threads() == threads  # restored
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    for prefix in ("kva:", "kva reference:", "kva fast path per sample:", "kva peak memory:", "probe:",
                   "probe vs per-prompt generate loop:", "probe peak memory:"):
        assert sum(line.startswith(prefix) for line in lines) == 1, prefix
    assert result["tiny"] and result["device"] == "cpu"
    assert result["kva_s_per_sample"] > 0 and result["kva_reference_s_per_sample"] > 0
    assert result["kva_max_rel_diff"] < 0.1  # bfloat16 rounding only
    assert set(result["kva_phases_s_per_sample"]) == {"prefix", "clean", "forward", "backward", "scores"}
    assert result["probe_prompts"] == 20 and result["probe_answers_per_s"] > 0
    assert 0 <= result["probe_greedy_agreement"] <= 1
    assert result["kva_peak_gib"] is None and result["probe_peak_gib"] is None  # no GPU, no GPU memory


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda(gpu_bench, capsys):
    assert gpu_bench.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert gpu_bench.main(["--device", "cpu"]) == 2  # the full shapes are not for a CPU
    assert "--tiny" in capsys.readouterr().err
