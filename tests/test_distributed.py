"""Two processes under `accelerate launch` (gloo on the CPU): attribution and training as on one.

One launch runs, in both processes, the command line twice: `knowpack attribute` (every process
attributes every second prompt; the scores are gathered) and `knowpack train` with LoKI (its KVA is
split and gathered the same way inside the run, then each batch is split over the processes and DDP
averages the gradients). The scores must equal one process's within SPEC §5.1's float tolerance,
the rows selected from them must be the same, and training must reach the same reliability. Only
rank zero prints.

On CPUs `accelerate launch --cpu` starts one process unless an MPI hostfile is given, so the test
asks for `--multi_gpu` (torchrun underneath) and the run's `device: cpu` makes accelerate pick gloo.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from knowpack.cli import main
from knowpack.methods.loki.kva import load_scores, max_rel_diff

LAUNCHED = """
import json, sys
from knowpack.cli import main
for argv in json.load(open(sys.argv[1])):
    code = main(argv)
    if code:
        sys.exit(code)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(tmp: Path, tok) -> Path:
    from knowpack.models import tiny_model

    model_dir = tmp / "model"
    # A larger init than the default lets the tiny model's logits move far enough to learn facts
    # in a few dozen steps by training only down_proj rows.
    tiny_model("llama", seed=0, vocab_size=len(tok), initializer_range=0.3).save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    (tmp / "facts.jsonl").write_text("".join(json.dumps({
        "id": f"f{i}", "question": f"Where was person {i} born?", "answers": [f"town{i % 5}"],
        "relation": "birthplace", "subject": f"person {i}"}) + "\n" for i in range(12)))
    # 7 prompts of different lengths: shards of 4 and 3, each grouped and padded its own way
    (tmp / "mc.jsonl").write_text("".join(json.dumps({
        "question": f"Pick {i}? " + "word " * (i % 5), "choices": ["a", "b", "c", "d"], "answer": i % 4,
        "subject": "test"}) + "\n" for i in range(7)))
    cfg = {"model": str(model_dir), "facts": str(tmp / "facts.jsonl"), "device": "cpu", "dtype": "float32",
           "seed": 0, "cache_dir": None,
           "probe": {"n_prompts": 1, "shots": 0, "n_samples": 0, "max_new_tokens": 4},
           "compose": {"n_unknown": 4, "mixing": "none", "eval_size": 2, "retention_size": 1},
           "train": {"method": "loki", "epochs": 30, "batch_size": 4, "lr": 0.2, "schedule": "constant",
                     "loss_on": "answer", "loki": {"q": 50, "attribution_data": str(tmp / "mc.jsonl")}},
           "eval": {"mc": [], "qa": [], "refusal": None}}
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _commands(tmp: Path, cfg: Path, tag: str) -> list[list[str]]:
    model = yaml.safe_load(cfg.read_text())["model"]
    return [["attribute", "--model", model, "--prompts", str(tmp / "mc.jsonl"), "--out",
             str(tmp / f"scores-{tag}.safetensors"), "--device", "cpu"],
            ["train", str(cfg), f"cache_dir={tmp / f'cache-{tag}'}", "--out", str(tmp / f"run-{tag}")]]


@pytest.mark.slow
def test_two_processes_attribute_and_train_like_one(tmp_path, tok):
    cfg = _inputs(tmp_path, tok)
    for argv in _commands(tmp_path, cfg, "one"):
        assert main([*argv, "--no-progress"]) == 0

    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps(_commands(tmp_path, cfg, "two")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("WORLD_SIZE", None), env.pop("RANK", None), env.pop("LOCAL_RANK", None)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), str(script), str(jobs)]
    res = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    # attribution: the same scores, prompt for prompt
    one, ids_one, _ = load_scores(tmp_path / "scores-one.safetensors")
    two, ids_two, _ = load_scores(tmp_path / "scores-two.safetensors")
    assert ids_two == ids_one and two.shape == one.shape == (7, 2, 32)
    assert max_rel_diff(two, one) < 1e-5
    # training: the same rows (KVA inside the run, gathered), the same steps, the same reliability
    run_one, run_two = tmp_path / "run-one", tmp_path / "run-two"
    nodes = [json.loads((d / "nodes.json").read_text())["layers"] for d in (run_one, run_two)]
    assert nodes[0] == nodes[1]
    s_one, s_two = (json.loads((d / "train_summary.json").read_text()) for d in (run_one, run_two))
    assert s_two["steps"] == s_one["steps"] == 30
    assert s_one["reliability_zero_shot"] == 1.0
    assert s_two["reliability_zero_shot"] == s_one["reliability_zero_shot"]
    loss = [json.loads(x)["loss"] for x in (run_two / "train_log.jsonl").read_text().splitlines()]
    assert len(loss) == 30 and loss[-1] < loss[0] / 4
    # rank zero alone prints results and logs progress; rank one only warns
    assert res.stdout.count("attributed 7 prompts") == 1 and "on 2 processes" in res.stdout
    assert res.stdout.count("trained loki") == 1
    info_from_rank_one = [line for line in res.stderr.splitlines()
                          if line.startswith("[rank 1]") and "warn" not in line.lower()]
    assert info_from_rank_one == []
    assert "[rank 0] composed" in res.stderr  # rank zero's INFO log is there
