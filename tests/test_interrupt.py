"""SIGKILL at named points of real `knowpack run` and `knowpack sweep` commands, then resume.

Each attempt is the knowpack command line (`knowpack.cli.main`, what the `knowpack` script runs) in
a process that is SIGKILLed at one point: inside an atomic write before its rename, between the
files of a cache entry, after a checkpoint, inside a checkpoint's write, after the adapter but before
its rename, at the start of evaluation, after metrics.json, in the middle of a results line. The
next attempt resumes in the same directory and is killed at the next point; the last one finishes.
The finished run must equal an uninterrupted one byte for byte, and the work counted across all
attempts (probes, benchmark scorings, evaluations, KVA, optimizer steps) shows what was redone:
only work whose output had not been completely written.

The attempts are forked from one server process that has imported torch and knowpack once (this
file run as a script), so each attempt costs its own work, not an interpreter start. One more run
is the installed `knowpack` script in a fresh process, killed from outside while it trains.
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# --- the fork server (runs as a script; no pytest needed) ----------------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(point: str | None, events: str) -> None:
    """Count work units into `events` and arrange the SIGKILL at `point` in this (forked) process."""
    import importlib

    from torch.optim.optimizer import register_optimizer_step_post_hook

    import knowpack.evaluate.stage as stage
    import knowpack.io as kio
    import knowpack.probe.slick as slick
    import knowpack.runs as runs
    import knowpack.sweep as sweep
    import knowpack.train as train
    from knowpack.methods.loki import kva

    def note(what: str) -> None:
        with open(events, "a") as fh:
            fh.write(what + "\n")

    def counted(module, name: str, what: str) -> None:
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            note(what)
            return real(*args, **kwargs)

        setattr(module, name, wrapper)

    register_optimizer_step_post_hook(lambda *_: note("step"))
    counted(runs, "probe_facts", "probe")  # a base-model probe that missed the cache
    counted(stage, "score_benchmarks", "bench")
    counted(stage, "probe_after", "evaluate")
    counted(kva, "attribute", "kva")
    if not point:
        return
    kind, _, arg = point.partition(":")
    if kind == "replace":  # inside an atomic write: the temporary file is complete, the rename not done
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            if fnmatch.fnmatch(str(dst), arg):
                _die()
            return real_replace(src, dst, *a, **k)

        os.replace = replace
    elif kind == "write":  # write:NAME:N:before|after -- the N-th write_json of a file called NAME
        name, nth, when = arg.split(":")
        count = [0]
        for module in (kio, train, slick, runs, stage):
            real_write = getattr(module, "write_json")

            def write_json(path, obj, _real=real_write):
                if Path(path).name == name:
                    count[0] += 1
                    if count[0] == int(nth) and when == "before":
                        _die()
                    out = _real(path, obj)
                    if count[0] == int(nth):
                        _die()
                    return out
                return _real(path, obj)

            module.write_json = write_json
    elif kind in ("call", "after-call"):  # call:MODULE.ATTR or after-call:MODULE.ATTR:N
        target, _, nth = arg.partition(":")
        mod_name, attr = target.rsplit(".", 1)
        module = importlib.import_module(mod_name)
        real = getattr(module, attr)
        calls = [0]

        def hooked(*args, **kwargs):
            if kind == "call":
                _die()
            out = real(*args, **kwargs)
            calls[0] += 1
            if calls[0] == int(nth):
                _die()
            return out

        setattr(module, attr, hooked)
    elif kind == "torn-append":  # half of a results line reaches the file, then the kill
        def torn(path, row):
            line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
            with open(path, "ab") as fh:
                fh.write(line[: len(line) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            _die()

        sweep.append_jsonl = torn
    else:
        raise ValueError(f"unknown kill point {point!r}")


def serve() -> None:
    """Read {argv, point, events, log} lines; run each in a forked child; answer {signal, code}."""
    # Imported once, before any fork, so that children start warm (transformers imports lazily,
    # which costs seconds per process). Nothing is computed here, so forking stays safe.
    import importlib

    import knowpack.cli as cli
    from knowpack.methods import method_names

    for name in ("torch", "transformers", "peft", "accelerate", "safetensors.torch", "knowpack.models",
                 "knowpack.runs", "knowpack.sweep", "knowpack.evaluate.stage", "knowpack.evaluate.metrics",
                 "knowpack.report", "knowpack.methods.loki.kva", "transformers.models.llama.modeling_llama",
                 "peft.utils.transformers_weight_conversion", "matplotlib.figure", "matplotlib.backends.backend_agg",
                 "PIL.PngImagePlugin"):
        try:
            importlib.import_module(name)
        except ImportError:  # a module of one release only (peft's weight conversion is newer than 0.18)
            pass
    from accelerate import Accelerator  # noqa: F401
    from peft import LoraConfig, PeftModel, get_peft_model  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache  # noqa: F401

    method_names()  # registers every method
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the attempt
            code = 1
            try:
                fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                _install(job.get("point"), job["events"])
                code = cli.main(job["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 99
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
                          "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}), flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
    sys.exit(0)

# --- the tests ------------------------------------------------------------------------------------

import pytest  # noqa: E402
import yaml  # noqa: E402

from test_run import write_inputs  # noqa: E402

RUN_KILLS = [
    "write:cache_key.json:1:before",          # probe cache entry: rows written, key (the completion mark) not
    "replace:*/probe_before.jsonl",           # inside an atomic write, before its rename
    "replace:*/bench/*.json",                 # benchmark cache: scored, not stored
    "after-call:knowpack.train.save_checkpoint:2",  # after a complete checkpoint (step 2)
    "write:checkpoint.json:2:after",          # checkpoint of step 4 complete in checkpoint.tmp, not renamed
    "write:checkpoint.json:1:before",         # checkpoint of step 5 half written (no checkpoint.json)
    "write:training.json:1:after",            # adapter complete in adapter.tmp, not renamed
    "call:knowpack.evaluate.stage.probe_after",  # evaluation started
    "call:knowpack.report.write_run_report",  # metrics.json written, report not
]
SWEEP_KILLS = [
    "after-call:knowpack.train.save_checkpoint:2",  # first point mid-training
    "call:knowpack.sweep.append_jsonl",       # first point finished, its results line not written
    "torn-append",                            # half of the first point's results line written
    "replace:*/kva/*.safetensors",            # second point (LoKI): KVA scores computed, cache write killed
    "after-call:knowpack.train.save_checkpoint:1",  # second point mid-training
]
#: Files that differ between two runs of one config by design (wall-clock times, versions).
VOLATILE = {"timings.json", "train_summary.json", "env.json", "report.md", "training.json"}


class Server:
    def __init__(self, tmp: Path):
        # one thread: tiny models gain nothing from more, and a busy machine makes them wait on each other
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
        self.tmp = tmp
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=str(tmp))
        assert json.loads(self.proc.stdout.readline()).get("ready")
        self.attempts = 0

    def run(self, argv: list[str], point: str | None, events: Path) -> dict:
        self.attempts += 1
        log = self.tmp / f"attempt{self.attempts}.log"
        self.proc.stdin.write(json.dumps({"argv": argv, "point": point, "events": str(events),
                                          "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        status = json.loads(self.proc.stdout.readline())
        status["log"] = log.read_text() if log.exists() else ""
        return status

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("forkserver"))
    yield s
    s.close()


def _events(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        out[line] = out.get(line, 0) + 1
    return out


def _config(tmp_path: Path, tiny_dir: Path, cache: str, **extra) -> Path:
    path = write_inputs(tmp_path, tiny_dir)
    cfg = yaml.safe_load(path.read_text())
    cfg["cache_dir"] = str(tmp_path / cache)
    cfg["train"].update({"epochs": 2, "batch_size": 2, "checkpoint_every": 1})  # 6 rows: 3 steps an epoch
    cfg["train"]["loki"] = {"attribution_data": cfg["eval"]["mc"][0]}
    cfg.update(extra)
    out = tmp_path / f"{cache}.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


def _files(d: Path) -> dict[str, bytes]:
    """Every finished output under `d` (temporary files of killed atomic writes excluded)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and p.name not in VOLATILE}


def _attempts(server: Server, argv: list[str], kills: list[str], events: Path) -> list[dict]:
    statuses = []
    for point in kills:
        st = server.run(argv, point, events)
        assert st["signal"] == signal.SIGKILL, f"kill point {point} was never reached:\n{st['log'][-3000:]}"
        statuses.append(st)
    final = server.run(argv, None, events)
    assert final["code"] == 0, final["log"][-3000:]
    return statuses


def test_run_killed_at_every_stage_resumes_to_the_uninterrupted_result(server, tmp_path, tiny_dir):
    cfg = _config(tmp_path, tiny_dir, "cache")
    ref_events, events = tmp_path / "ref.events", tmp_path / "kill.events"
    ref = server.run(["run", str(cfg), "--out", str(tmp_path / "ref-run"), "--no-progress"], None, ref_events)
    assert ref["code"] == 0, ref["log"][-3000:]
    (tmp_path / "cache").rename(tmp_path / "ref-cache")  # the killed run starts from an empty cache

    out = tmp_path / "run"
    _attempts(server, ["run", str(cfg), "--out", str(out), "--no-progress"], RUN_KILLS, events)

    # nothing lost: every output equals the uninterrupted run's, byte for byte
    got, want = _files(out), _files(tmp_path / "ref-run")
    assert sorted(got) == sorted(want)
    differ = [k for k in want if got[k] != want[k]]
    assert differ == [], [(k, got[k][:400], want[k][:400]) for k in differ]
    assert (out / "report.md").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(("checkpoint", "adapter.tmp"))]
    # nothing finished was redone: only work whose output was cut short ran twice
    clean, counted = _events(ref_events), _events(events)
    assert clean == {"probe": 2, "bench": 2, "evaluate": 1, "step": 6}  # probes: the base and its noise floor
    assert counted == {"probe": 3,      # the probe whose cache entry lacked its key file
                       "bench": 3,      # the base scoring whose cache write was killed
                       "evaluate": 1,   # never repeated: killed before it, reused after metrics.json
                       "step": 7}       # step 5, whose checkpoint was half written
    # the killed cache entry was never read as complete: the cache now holds two complete entries
    entries = list((tmp_path / "cache" / "probe").iterdir())
    assert len(entries) == 2 and all((e / "cache_key.json").exists() for e in entries)


def test_sweep_killed_at_every_stage_records_each_point_once(server, tmp_path, tiny_dir):
    cfg_path = _config(tmp_path, tiny_dir, "cache")
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["points"] = [{"train.method": "lora"}, {"train.method": "loki", "train.lr": 1e-3}]
    sweep_cfg = tmp_path / "sweep.yaml"
    sweep_cfg.write_text(yaml.safe_dump(cfg))
    events, out = tmp_path / "sweep.events", tmp_path / "sweep"
    _attempts(server, ["sweep", str(sweep_cfg), "--out", str(out)], SWEEP_KILLS, events)

    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # the torn line was repaired: every line parses
    assert len(records) == 2 and len({r["point"] for r in records}) == 2
    for r in records:  # each record is its run directory's metrics
        assert json.loads((Path(r["run_dir"]) / "metrics.json").read_text()) == r["metrics"]
    assert (out / "report.md").exists()
    counted = _events(events)
    assert counted == {"probe": 2,      # the base and its noise floor, shared by both points through the cache
                       "kva": 2,        # the attribution whose cache write was killed
                       "bench": 3,      # base once (cached), then after training for each point
                       "evaluate": 2,   # once per point, never repeated
                       "step": 12}      # 6 per point, none repeated: kills came after checkpoints


@pytest.mark.slow
def test_installed_knowpack_run_killed_from_outside_resumes(server, tmp_path, tiny_dir):
    """The `knowpack` script in a fresh process, SIGKILLed by this test while it trains."""
    cfg = _config(tmp_path, tiny_dir, "cache")
    yaml_cfg = yaml.safe_load(cfg.read_text())
    yaml_cfg["train"]["epochs"] = 8  # 24 steps, each checkpointed: long enough to be caught training
    cfg.write_text(yaml.safe_dump(yaml_cfg))
    out = tmp_path / "run"
    exe = Path(sys.executable).with_name("knowpack")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "knowpack.cli"]
    proc = subprocess.Popen([*cmd, "run", str(cfg), "--out", str(out), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "train_log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = len(log.read_text().splitlines())
    events = tmp_path / "events"
    done = server.run(["run", str(cfg), "--out", str(out), "--no-progress"], None, events)
    assert done["code"] == 0, done["log"][-3000:]
    steps = _events(events).get("step", 0)
    assert 24 - killed_at <= steps <= 24 - killed_at + 1  # at most the step in flight is redone
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == list(range(1, 25))
