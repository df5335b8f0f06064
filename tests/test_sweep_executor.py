"""Parallel sweeps through submitit: options, SLURM settings, locks, and kills of the driver and of workers.

The sweeps run with submitit's local executor and 2 workers, so each point is its own process, as
on a GPU box or a SLURM cluster (neither of which CI has). Drivers run as subprocesses so that the
tests can SIGKILL them; their points are small functions defined in the driver script (pickled by
value to the workers), or real `knowpack run`s of the tiny model that count their work.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import FAST

from knowpack.cli import build_parser, main
from knowpack.errors import KnowpackError
from knowpack.executors import Sequential, Submitit, from_arguments, require_submitit
from knowpack.sweep import load_sweep, read_results, run_sweep

submitit = pytest.importorskip("submitit")

GRID = "model: world\ngrid:\n  compose.n_unknown: [1, 2]\n  seed: [0, 1]\n"  # 4 points
KILL_GRID = "model: world\ngrid:\n  compose.n_unknown: [1, 2, 3]\n  seed: [0, 1]\n"  # 6 points

#: A driver whose points sleep and then write metrics.json; like full_run, a point whose metrics.json
#: exists returns it without working again. Events: start/end/reused, with the worker's pid. Its
#: config class is a small one, so that a worker starts without importing torch.
FAKE_DRIVER = textwrap.dedent("""
    import json, os, sys, time
    from dataclasses import dataclass, field
    from knowpack.executors import Submitit
    from knowpack.io import write_json
    from knowpack.sweep import run_sweep

    @dataclass
    class Compose:
        n_unknown: int = 5

    @dataclass
    class Config:
        model: str = "world"
        seed: int = 0
        compose: Compose = field(default_factory=Compose)

    EVENTS = os.environ["KP_EVENTS"]
    SLEEP = float(os.environ.get("KP_SLEEP", "0.3"))

    def note(what):
        with open(EVENTS, "a") as fh:
            fh.write(what + "\\n")

    def fake(config, run_dir):
        done = run_dir / "metrics.json"
        if done.exists():
            note(f"reused {run_dir.name} {os.getpid()}")
            return {"metrics": json.loads(done.read_text())}
        note(f"start {run_dir.name} {os.getpid()}")
        time.sleep(SLEEP)
        metrics = {"n_unknown": config.compose.n_unknown, "seed": config.seed}
        write_json(done, metrics)
        note(f"end {run_dir.name} {os.getpid()}")
        return {"metrics": metrics, "pad": "x" * 20000}

    run_sweep(sys.argv[1], sys.argv[2], run_point=fake, executor=Submitit(workers=int(sys.argv[3])),
              config_cls=Config)
""")

#: A driver of real tiny runs that counts their work: runs started, optimizer steps, evaluations.
RUN_DRIVER = textwrap.dedent("""
    import os, sys
    from knowpack.executors import Submitit
    from knowpack.sweep import run_sweep

    EVENTS = os.environ["KP_EVENTS"]

    def counted(config, run_dir):
        import knowpack.evaluate.stage as stage
        from knowpack.runs import full_run_record
        from torch.optim.optimizer import register_optimizer_step_post_hook

        def note(what):
            with open(EVENTS, "a") as fh:
                fh.write(f"{what} {run_dir.name} {os.getpid()}\\n")

        note("start")
        register_optimizer_step_post_hook(lambda *_: note("step"))
        real = stage.probe_after

        def probe_after(*args, **kwargs):
            note("evaluate")
            return real(*args, **kwargs)

        stage.probe_after = probe_after
        record = full_run_record(config, run_dir)
        note("end")
        return record

    run_sweep(sys.argv[1], sys.argv[2], run_point=counted, executor=Submitit(workers=2))
""")

#: Stands for an orphaned worker: holds a point's lock until told, finishes the point, lets go.
HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from knowpack.executors import point_lock
    from knowpack.io import write_json

    with point_lock(Path(sys.argv[1]), "the orphan"):
        print("locked", flush=True)
        sys.stdin.readline()
        write_json(Path(sys.argv[2]) / "metrics.json", {"by": "orphan"})
""")


def _env(events: Path, **extra: str) -> dict[str, str]:
    # No GPUs to hand out, one thread per process: the machine is small and shared.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
            "CUDA_VISIBLE_DEVICES": "", "KP_EVENTS": str(events), **extra}


def _events(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_dead(pids: set[int], timeout: float = 15.0) -> set[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return {p for p in pids if _alive(p)}


def _job_logs(out: Path, point: str) -> str:
    """What the jobs of one point logged, oldest session first (for failure messages)."""
    return "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((out / "jobs" / point).rglob("*_log.out")))


def _check_results(out: Path, n: int) -> list[dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    points = [r["point"] for r in records]
    assert len(points) == n and len(set(points)) == n, points
    return records


# --- options ---------------------------------------------------------------------------------


def _args(*argv: str):
    return build_parser().parse_args(["sweep", "s.yaml", *argv])


def test_options_choose_the_executor_and_reject_what_does_not_fit():
    assert isinstance(from_arguments(_args()), Sequential)
    ex = from_arguments(_args("--executor", "submitit", "--workers", "2", "--timeout-min", "30"))
    assert isinstance(ex, Submitit) and (ex.cluster, ex.workers, ex.timeout_min, ex.slurm) == ("local", 2, 30, {})
    ex = from_arguments(_args("--executor", "submitit", "--cluster", "slurm", "--slurm-partition", "gpu",
                              "--gpus-per-task", "2", "--mem-gb", "40", "--slurm-option", "account=proj",
                              "--slurm-option", "exclusive=true", "--slurm-option", "mail-type=END"))
    assert ex.slurm == {"partition": "gpu", "gpus_per_node": 2, "mem_gb": 40.0, "account": "proj",
                        "exclusive": True, "mail_type": "END"}
    for argv, says in ((["--workers", "2"], "--executor submitit"),
                       (["--cluster", "slurm"], "--executor submitit"),
                       (["--executor", "submitit", "--slurm-partition", "gpu"], "--cluster slurm"),
                       (["--executor", "submitit", "--cluster", "slurm", "--slurm-option", "account"], "KEY=VALUE")):
        with pytest.raises(KnowpackError, match=says):
            from_arguments(_args(*argv))


def test_a_missing_submitit_names_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now raises ImportError
    with pytest.raises(KnowpackError, match=r"pip install 'knowpack\[cluster\]'"):
        require_submitit()
    cfg = tmp_path / "s.yaml"
    cfg.write_text(GRID)
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "sw"), "--executor", "submitit"]) == 2
    assert "pip install 'knowpack[cluster]'" in capsys.readouterr().err
    assert not (tmp_path / "sw").exists()  # nothing ran


def test_slurm_settings_reach_the_sbatch_script(tmp_path, monkeypatch):
    """No SLURM here: a stand-in `srun` lets submitit build the script that `sbatch` would get."""
    _fake_slurm(tmp_path, monkeypatch)
    ex = Submitit(cluster="slurm", timeout_min=600,
                  slurm={"partition": "gpu", "cpus_per_task": 8, "account": "proj", "reservation": "r1"})
    job_ex = ex._executor(submitit, tmp_path / "jobs", "seed=1-abc", 0)
    script = job_ex._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=600",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --account=proj", "#SBATCH --reservation=r1",
                 "#SBATCH --job-name=knowpack-seed=1-abc", "#SBATCH --ntasks-per-node=1", "#SBATCH --nodes=1"):
        assert line in script, line


def _fake_slurm(tmp_path: Path, monkeypatch, sbatch: str | None = None) -> None:
    """Stand-ins for SLURM's commands on PATH: `srun` (which submitit looks for) and maybe `sbatch`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", "exit 1"), ("sbatch", sbatch)):
        if body is not None:
            (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
            (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")


def test_slurm_without_its_commands_is_refused_before_anything_runs(tmp_path, monkeypatch):
    _fake_slurm(tmp_path, monkeypatch)  # srun only
    cfg = tmp_path / "s.yaml"
    cfg.write_text(GRID)
    with pytest.raises(KnowpackError, match="sbatch not found on PATH"):
        run_sweep(cfg, tmp_path / "sw", run_point=lambda c, d: {}, executor=Submitit(cluster="slurm"))
    assert not (tmp_path / "sw").exists()


def test_a_job_slurm_refuses_fails_its_point_with_the_reason(tmp_path, monkeypatch):
    _fake_slurm(tmp_path, monkeypatch, sbatch="echo 'sbatch: error: QOSMaxSubmitJobPerUserLimit' >&2; exit 1")
    cfg = tmp_path / "s.yaml"
    cfg.write_text(GRID)
    with pytest.raises(KnowpackError, match=r"(?s)1 point\(s\) failed \(3 not started\).*could not start its "
                                            r"job.*QOSMaxSubmitJobPerUserLimit"):
        run_sweep(cfg, tmp_path / "sw", run_point=lambda c, d: {}, executor=Submitit(cluster="slurm"))
    assert read_results(tmp_path / "sw" / "results.jsonl") == []


@pytest.mark.parametrize("env, gpus", [("0,1,3", [0, 1, 3]), ("", []), ("-1", []), ("2,-1,3", [2])])
def test_workers_get_the_gpus_cuda_visible_devices_lists(monkeypatch, env, gpus):
    from knowpack.executors import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert visible_gpus() == gpus
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8e2b1c55")
    with pytest.raises(KnowpackError, match="by index"):
        visible_gpus()


def test_a_device_other_than_cuda0_is_refused_when_each_worker_has_one_gpu(tmp_path, monkeypatch):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(GRID + "device: cuda:1\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(KnowpackError, match="cuda:0"):
        run_sweep(cfg, tmp_path / "sw", run_point=lambda c, d: {}, executor=Submitit(workers=2))


# --- locks ---------------------------------------------------------------------------------


def test_a_second_driver_is_refused(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(GRID)
    out = tmp_path / "sw"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from pathlib import Path
        from knowpack.executors import driver_lock
        with driver_lock(Path({str(out)!r})):
            print("locked", flush=True)
            input()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(KnowpackError, match=f"another `knowpack sweep` drives .*pid {holder.pid}"):
            run_sweep(cfg, out, run_point=lambda c, d: {"metrics": {}})
        assert not (out / "results.jsonl").exists()
    finally:
        holder.communicate("\n", timeout=30)
    assert len(run_sweep(cfg, out, run_point=lambda c, d: {"metrics": {}})) == 4  # the lock died with its holder


def test_a_point_held_by_an_orphan_waits_and_is_recorded_once(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(GRID)
    out, events = tmp_path / "sw", tmp_path / "events"
    (tmp_path / "driver.py").write_text(FAKE_DRIVER)
    (tmp_path / "holder.py").write_text(HOLDER)
    _, points = load_sweep(cfg)
    held = points[0].id
    holder = subprocess.Popen([sys.executable, str(tmp_path / "holder.py"), str(out / "locks" / f"{held}.lock"),
                               str(out / "runs" / held)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=_env(events))
    assert holder.stdout.readline().strip() == "locked"
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(cfg), str(out), "2"],
                              env=_env(events), stderr=subprocess.PIPE, text=True)

    def logs() -> str:
        return "".join(p.read_text() for p in (out / "jobs" / held).rglob("*_log.out"))

    deadline = time.time() + 120
    while time.time() < deadline and "is being run by another process" not in logs():
        time.sleep(0.05)
    assert f"pid {holder.pid} on" in logs()  # the waiting worker says who holds the point
    holder.communicate("\n", timeout=30)  # the orphan finishes the point and lets go
    _, err = driver.communicate(timeout=180)
    assert driver.returncode == 0, err[-3000:]
    records = _check_results(out, 4)
    assert next(r for r in records if r["point"] == held)["metrics"] == {"by": "orphan"}
    ev = _events(events)
    assert [e[0] for e in ev if e[1] == held] == ["reused"]  # waited for the orphan, then took its result
    assert sorted(e[1] for e in ev if e[0] == "end") == sorted(p.id for p in points[1:])


# --- kills -----------------------------------------------------------------------------------


def test_two_worker_sweep_killed_twice_records_each_point_once(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(KILL_GRID)
    out, events = tmp_path / "sw", tmp_path / "events"
    script = tmp_path / "driver.py"
    script.write_text(FAKE_DRIVER)
    results = out / "results.jsonl"
    rng = random.Random(3)
    snapshots = []  # (points recorded at a kill, events until then)
    for _ in range(2):
        before = len(read_results(results))
        proc = subprocess.Popen([sys.executable, str(script), str(cfg), str(out), "2"], env=_env(events),
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # one more point recorded
            if len(read_results(results)) > before:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))  # then a kill at a random moment
        assert proc.poll() is None, "the sweep finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the workers notice that their driver is gone and stop: no orphan writes on
        assert _wait_dead({int(e[2]) for e in _events(events)}) == set()
        snapshots.append(({r["point"] for r in read_results(results)}, len(_events(events))))
    done = subprocess.run([sys.executable, str(script), str(cfg), str(out), "2"], env=_env(events), timeout=180,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_results(out, 6)
    ev = _events(events)
    assert 0 < len(snapshots[0][0]) < len(snapshots[1][0]) < 6
    for recorded, n_events in snapshots:  # a recorded point never ran again
        assert not [e for e in ev[n_events:] if e[1] in recorded]
    for point in {e[1] for e in ev}:  # and no point finished twice
        assert [e[0] for e in ev if e[1] == point].count("end") <= 1


def test_a_killed_worker_fails_its_point_and_a_rerun_resumes(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("model: world\ngrid:\n  seed: [0, 1, 2]\n")
    out, events = tmp_path / "sw", tmp_path / "events"
    script = tmp_path / "driver.py"
    script.write_text(FAKE_DRIVER)
    proc = subprocess.Popen([sys.executable, str(script), str(cfg), str(out), "2"], env=_env(events, KP_SLEEP="3"),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not [e for e in _events(events) if e[0] == "start"]:
        time.sleep(0.02)
    victim = next(e for e in _events(events) if e[0] == "start")
    os.kill(int(victim[2]), signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err[-3000:]
    assert "1 point(s) failed" in err and victim[1] in err and "_log.out" in err
    assert victim[1] not in {r["point"] for r in read_results(out / "results.jsonl")}
    done = subprocess.run([sys.executable, str(script), str(cfg), str(out), "2"], env=_env(events), timeout=180,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_results(out, 3)


@pytest.mark.slow
def test_two_worker_sweep_of_real_runs_killed_mid_training_resumes(tmp_path, tiny_dir):
    """Real tiny runs: the driver is SIGKILLed while a point trains; finished points are not redone,
    the interrupted one resumes from its checkpoint, every point is recorded once."""
    from test_run import write_inputs

    cfg = yaml.safe_load(write_inputs(tmp_path, tiny_dir).read_text())
    cfg["train"].update({"epochs": 30, "batch_size": 2, "checkpoint_every": 1})  # caught training, killed before it ends
    cfg["compose"]["n_unknown"] = 3
    # CI's reduced form: 3 points, so the second wave is one run that has the 2 cores to itself
    cfg["grid"] = {"seed": [1, 2, 3]} if FAST else {"seed": [1, 2], "compose.n_unknown": [2, 3]}
    sweep_cfg = tmp_path / "sweep.yaml"
    sweep_cfg.write_text(yaml.safe_dump(cfg))
    out, events = tmp_path / "sw", tmp_path / "events"
    script = tmp_path / "driver.py"
    script.write_text(RUN_DRIVER)
    results = out / "results.jsonl"
    proc = subprocess.Popen([sys.executable, str(script), str(sweep_cfg), str(out)], env=_env(events),
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    caught = None
    while time.time() < deadline and proc.poll() is None and caught is None:
        steps: dict[str, int] = {}
        for what, point, _ in _events(events):  # read before the results: a point recorded since is no candidate
            steps[point] = -1 if what == "end" or steps.get(point) == -1 else steps.get(point, 0) + (what == "step")
        recorded = {r["point"] for r in read_results(results)}
        caught = next((p for p, n in steps.items() if recorded and p not in recorded and n >= 3), None)
        time.sleep(0.01)
    assert caught and proc.poll() is None, "the sweep was never caught training a point after recording one"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _wait_dead({int(e[2]) for e in _events(events)}) == set()  # the workers stopped with their driver
    recorded_before = {r["point"] for r in read_results(results)}
    finished_before = {p.name for p in (out / "runs").iterdir() if (p / "metrics.json").exists()}
    n_before = len(_events(events))
    assert caught not in finished_before, "the point caught training finished before the kill landed"

    done = subprocess.run([sys.executable, str(script), str(sweep_cfg), str(out)], env=_env(events), timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    records = _check_results(out, 3 if FAST else 4)
    for r in records:  # each record is its run directory's metrics
        assert json.loads((Path(r["run_dir"]) / "metrics.json").read_text()) == r["metrics"]
    ev, after = _events(events), _events(events)[n_before:]
    for point in recorded_before:  # never started again
        assert [e[0] for e in ev if e[1] == point].count("start") == 1
    for point in finished_before:  # finished but perhaps unrecorded: read back, neither trained nor evaluated
        assert not [e for e in after if e[1] == point and e[0] in ("step", "evaluate")]
    for r in records:  # at most the step in flight at the kill was redone
        point = r["point"]
        total = len((Path(r["run_dir"]) / "train_log.jsonl").read_text().splitlines())
        steps = [e for e in ev if e[1] == point and e[0] == "step"]
        assert total <= len(steps) <= total + 1, (point, total, len(steps), _job_logs(out, point))
    caught_steps = next(r for r in records if r["point"] == caught)["metrics"]["run"]["steps"]
    caught_after = [e for e in after if e[1] == caught and e[0] == "step"]
    assert len(caught_after) < caught_steps, _job_logs(out, caught)  # resumed from its checkpoint, not step 1
