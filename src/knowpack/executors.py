"""Where a sweep's points run: one after another in this process, or several at once through submitit.

    knowpack sweep CONFIG --out DIR                                      one point after another, here
    knowpack sweep CONFIG --out DIR --executor submitit --workers 4      4 worker processes, one GPU each
    knowpack sweep CONFIG --out DIR --executor submitit --cluster slurm \\
        --slurm-partition gpu --timeout-min 600 --workers 32             a SLURM job per point, 32 at a time

Why submitit and not Ray. A point is a whole run (minutes to hours) that checkpoints itself, so what
a sweep asks of an engine is "run this call as a job with one GPU and hand back its result", which is
all submitit does. It submits to SLURM itself (one sbatch job per point, with partition, time, GPUs
and any other sbatch option), where Ray would first need a Ray cluster started inside a SLURM
allocation, that is, the launcher this module exists to spare users. Its local executor starts each
job as a plain subprocess with CUDA_VISIBLE_DEVICES set, through the same pickle-in, pickle-out path
as on SLURM, so the tests exercise the real mechanism on a CPU. It is a pure-Python wheel of under
100 kB with two small pure-Python dependencies (cloudpickle, typing_extensions), so `.[dev]` stays
light on CI; Ray is a wheel of about 80 MB whose local mode starts a GCS server, a raylet and more
beside every test. And its jobs are ordinary processes and files, so what a killed driver leaves
behind is plain (below).

The guarantees are the sequential sweep's:

- Exactly once. The driver (the `knowpack sweep` process) is the only writer of `results.jsonl`:
  a worker returns its record and the driver appends it, fsynced, as the sequential sweep does. A
  second driver on the same sweep directory is refused while the first lives (`sweep.lock`).
- One writer per run directory. Every point runs under an exclusive lock (`locks/<point id>.lock`,
  an flock that the kernel drops when its holder dies, however it dies). A worker that finds the
  lock held logs who holds it and waits; then full_run finds the holder's finished metrics.json
  and returns it without training or evaluating again, or resumes from the holder's checkpoint.
- A killed driver. Local workers watch the driver and exit within a second or two when it is gone
  (kept: everything up to their last checkpoint), so a resumed sweep does not share GPUs with
  orphans. SLURM jobs run on: the resumed sweep submits their points again, each new job waits on
  its orphan's lock, then hands back what the orphan finished, and the driver records it once.
  `scancel --name knowpack-<point id>` stops an orphan early; submitit requeues a job that SLURM
  preempts or times out, and the run resumes from its checkpoint.
- A killed worker, or a job SLURM refuses (e.g. over a job limit: lower --workers), fails its
  point: the driver starts no more points, records those still running as they finish, and exits
  with an error naming the point and its log; the same command again resumes from the checkpoints.
  Ctrl-C stops the driver and cancels the jobs it started.

Locks need a filesystem whose flock works across the machines that share it (local disks and NFSv4
do; Lustre needs its `flock` mount option). Caches (probe, KVA, benchmarks) are shared by concurrent
workers: each entry is written atomically, and two workers writing one entry write the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from knowpack.errors import ConfigError, KnowpackError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "submitit")
CLUSTERS = ("local", "slurm")
INSTALL = "pip install 'knowpack[cluster]'"
#: No time limit for a local worker (submitit's local default is two minutes).
LOCAL_TIMEOUT_MIN = 60 * 24 * 365
SLURM_TIMEOUT_MIN = 60 * 24


class SweepError(KnowpackError):
    """Points of a sweep that failed; what finished is recorded, and rerunning resumes the rest."""

    exit_code = 1


RunPoint = Callable[[Any, Path], dict[str, Any]]


@dataclass
class Task:
    """One unfinished grid point: its place in the grid, its run directory and its lock."""

    index: int
    point: Any  # sweep.GridPoint
    run_dir: Path
    lock: Path


class Executor(Protocol):
    name: str

    def check(self, points: list[Any]) -> None:
        """Raise before anything runs if the points cannot run here."""

    def run(self, tasks: list[Task], run_point: RunPoint, started: Callable[[Task], None],
            finished: Callable[[Task, dict[str, Any]], None]) -> None:
        """Run every task; call `started` as each starts and `finished` with its record, in this process."""


# --- locks -----------------------------------------------------------------------------------


def _holder() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _try_lock(fd: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _read_holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "a process that has not said who it is"
    except OSError:
        return "unknown"


def _mark_held(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (_holder() + "\n").encode(), 0)


@contextlib.contextmanager
def driver_lock(sweep_dir: Path) -> Iterator[None]:
    """Hold `sweep_dir/sweep.lock` while this process drives the sweep; refuse if another does."""
    path = Path(sweep_dir) / "sweep.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            raise KnowpackError(f"another `knowpack sweep` drives {sweep_dir} ({_read_holder(path)}); two drivers "
                                "would record points twice: wait for it to finish, or stop it and run this again")
        _mark_held(fd)
        yield
    finally:
        os.close(fd)  # closing the only descriptor drops the lock


@contextlib.contextmanager
def point_lock(path: Path, what: str, poll_s: float = 1.0) -> Iterator[None]:
    """Hold the exclusive lock of one point's run directory, waiting while another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            log.warning("%s is being run by another process (%s), e.g. a worker of a killed sweep; waiting "
                        "until it finishes or dies, then going on from what it left", what, _read_holder(path))
            while not _try_lock(fd):
                time.sleep(poll_s)
            log.info("%s: the other process is done; going on", what)
        _mark_held(fd)
        yield
    finally:
        os.close(fd)


# --- what a worker runs ----------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks (Linux), so a reused pid is not taken for the driver."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields and fields[0] == "Z":  # a zombie: dead, not yet reaped
        return "dead"
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _start_time(pid)
    return now != "dead" and (start is None or now is None or now == start)


def _watch_driver(pid: int, start: str | None, every_s: float = 0.5) -> None:
    def watch() -> None:
        while _alive(pid, start):
            time.sleep(every_s)
        log.error("the sweep driver (pid %d) is gone; this worker stops too (a resumed sweep goes on from "
                  "the last checkpoint)", pid)
        logging.shutdown()
        os._exit(3)

    threading.Thread(target=watch, name="watch-driver", daemon=True).start()


def run_task(run_point: RunPoint, point_id: str, config: Any, run_dir: Path, lock: Path, *,
             watch: tuple[int, str | None] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run one point under its lock; in a worker, optionally die with the driver and cap CPU threads."""
    if watch:
        _watch_driver(*watch)
    if threads:
        import torch

        torch.set_num_threads(threads)
    with point_lock(lock, f"point {point_id}"):
        return run_point(config, Path(run_dir))


class PointJob:
    """What a submitit job calls. Having `checkpoint` makes the job requeueable: submitit requeues a
    job that SLURM preempts or times out, and the run resumes from its own checkpoint."""

    def __call__(self, run_point: RunPoint, point_id: str, config: Any, run_dir: str, lock: str,
                 watch: tuple[int, str | None] | None = None, threads: int | None = None) -> tuple[str, dict]:
        ours = logging.getLogger("knowpack")
        if not ours.handlers:  # the job's log gets knowpack's messages (submitit logs its own)
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
            ours.addHandler(handler)
            ours.setLevel(logging.INFO)
        cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
        if threads is None and cpus.isdigit() and "OMP_NUM_THREADS" not in os.environ:
            threads = int(cpus)  # torch would otherwise use every core of the node, not the job's share
        return point_id, run_task(run_point, point_id, config, Path(run_dir), Path(lock), watch=watch,
                                  threads=threads)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


# --- executors -------------------------------------------------------------------------------


@dataclass
class Sequential:
    """One point after another, in this process (the default)."""

    name: str = "local"

    def check(self, points: list[Any]) -> None:
        pass

    def run(self, tasks: list[Task], run_point: RunPoint, started: Callable[[Task], None],
            finished: Callable[[Task, dict[str, Any]], None]) -> None:
        for task in tasks:
            started(task)
            finished(task, run_task(run_point, task.point.id, task.point.config, task.run_dir, task.lock))


def require_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise KnowpackError(f"--executor submitit needs the submitit package: {INSTALL} "
                            "(or pip install submitit)") from None
    return submitit


def visible_gpus() -> list[int]:
    """The GPUs this machine lets a process see, as the indices CUDA_VISIBLE_DEVICES takes."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        try:
            import torch

            return list(range(torch.cuda.device_count()))
        except Exception:  # noqa: BLE001 - no usable CUDA means no GPUs to hand out
            return []
    gpus = []
    for item in (x.strip() for x in env.split(",")):
        if item.upper().startswith(("GPU-", "MIG-")):
            raise KnowpackError(f"CUDA_VISIBLE_DEVICES={env!r}: the submitit executor hands GPUs to workers by "
                                "index; list them by index (e.g. 0,1,3), not by UUID")
        if not item.isdigit():
            break  # CUDA stops reading the list at the first invalid entry (e.g. -1 hides every GPU)
        gpus.append(int(item))
    return gpus


@dataclass
class Submitit:
    """Up to `workers` points at once, each in its own submitit job: a local process or a SLURM job.

    Locally each worker sees one GPU (CUDA_VISIBLE_DEVICES; with more workers than GPUs they take
    turns round the list), or on a machine without GPUs, an equal share of the CPU threads.
    `slurm` holds submitit's SLURM parameters (partition, gpus_per_node, cpus_per_task, mem_gb, and
    any `slurm_*` name); sbatch options submitit has no name for go to `additional_parameters`.
    """

    cluster: str = "local"
    workers: int | None = None
    timeout_min: int | None = None
    slurm: dict[str, Any] = field(default_factory=dict)
    poll_s: float | None = None
    name: str = "submitit"
    gpus: list[int] = field(default_factory=list, init=False)

    def check(self, points: list[Any]) -> None:
        require_submitit()
        if self.cluster not in CLUSTERS:
            raise KnowpackError(f"cluster {self.cluster!r}: expected one of {', '.join(CLUSTERS)}")
        if self.workers is not None and self.workers < 1:
            raise KnowpackError(f"--workers {self.workers}: expected at least 1")
        if self.cluster == "local":
            if self.slurm:
                raise KnowpackError(f"{', '.join(sorted(self.slurm))}: SLURM settings need --cluster slurm")
            self.gpus = visible_gpus()
        else:
            missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
            if missing:
                raise KnowpackError(f"--cluster slurm: {' and '.join(missing)} not found on PATH; run the sweep where "
                                    "SLURM's commands work (e.g. a login node), or use --cluster local")
        gpus_each = self.slurm.get("gpus_per_node", 1) if self.cluster == "slurm" else min(1, len(self.gpus))
        if gpus_each == 1:
            devices = {str(getattr(p.config, "device", "")) for p in points}
            wrong = sorted(d for d in devices if d.startswith("cuda:") and d != "cuda:0")
            if wrong:
                raise ConfigError([f"device: {', '.join(wrong)}: each worker sees its one GPU as cuda:0; set "
                                   "device: auto (or cuda) and let the executor choose the GPU"])

    # the job of one point

    def _executor(self, submitit: Any, folder: Path, point_id: str, slot: int) -> Any:
        timeout = self.timeout_min
        if self.cluster == "local":
            ex = submitit.LocalExecutor(folder)
            gpus = [self.gpus[slot % len(self.gpus)]] if self.gpus else []
            ex.update_parameters(timeout_min=timeout or LOCAL_TIMEOUT_MIN, gpus_per_node=len(gpus),
                                 visible_gpus=gpus, tasks_per_node=1, stderr_to_stdout=True)
            return ex
        ex = submitit.AutoExecutor(folder, cluster="slurm")
        params: dict[str, Any] = {"name": f"knowpack-{point_id}", "timeout_min": timeout or SLURM_TIMEOUT_MIN,
                                  "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 1, "stderr_to_stdout": True}
        known = submitit.SlurmExecutor._valid_parameters()
        extra = {}
        for key, value in self.slurm.items():
            if key in params or key in ("cpus_per_task", "mem_gb"):
                params[key] = value
            elif key.removeprefix("slurm_") in known:
                params["slurm_" + key.removeprefix("slurm_")] = value
            else:
                extra[key.replace("_", "-")] = value
        if extra:
            params["slurm_additional_parameters"] = extra
        ex.update_parameters(**params)
        return ex

    def _threads(self, workers: int) -> int | None:
        """Torch threads of each local worker: an equal share of the cores, unless OMP_NUM_THREADS (which
        reaches every worker) says otherwise. A SLURM job takes its own share: see `PointJob`."""
        if self.cluster == "slurm" or "OMP_NUM_THREADS" in os.environ:
            return None
        return max(1, (os.cpu_count() or 1) // workers)

    def run(self, tasks: list[Task], run_point: RunPoint, started: Callable[[Task], None],
            finished: Callable[[Task, dict[str, Any]], None]) -> None:
        if not tasks:
            return
        submitit = require_submitit()
        workers = self.workers or (max(1, len(self.gpus)) if self.cluster == "local" else len(tasks))
        poll = self.poll_s or (0.2 if self.cluster == "local" else 5.0)
        session = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        watch = (os.getpid(), _start_time(os.getpid())) if self.cluster == "local" else None
        threads = self._threads(workers)
        where = (f"{len(self.gpus)} GPU(s)" if self.gpus else "CPU") if self.cluster == "local" else "SLURM"
        log.info("submitit (%s): %d point(s), at most %d at a time (%s)", self.cluster, len(tasks), workers, where)
        pending: deque[Task] = deque(tasks)
        free = list(range(workers))
        running: dict[Any, tuple[Task, int]] = {}
        failed: list[tuple[Task, str, str]] = []
        recorded = 0
        try:
            while running or (pending and not failed):
                while pending and free and not failed:
                    task, slot = pending.popleft(), free.pop(0)
                    folder = task.run_dir.parent.parent / "jobs" / task.point.id / session
                    try:
                        ex = self._executor(submitit, folder, task.point.id, slot)
                        job = ex.submit(PointJob(), run_point, task.point.id, task.point.config, str(task.run_dir),
                                        str(task.lock), watch, threads)
                    except Exception as exc:  # noqa: BLE001 - bad settings, sbatch refusing (e.g. a job limit)
                        # Like a failed point: the jobs already running go on and are recorded.
                        log.error("point %s: submitit could not start its job: %s", task.point.id, exc)
                        failed.append((task, f"could not start its job: {str(exc).strip()[-500:]}", ""))
                        free.append(slot)
                        break
                    if self.cluster == "local" and hasattr(job, "_results_timeout_s"):
                        # A local job writes its result before its process ends, so a missing result (a killed
                        # worker) is final at once; submitit's 15 s grace is for network filesystems.
                        job._results_timeout_s = 1
                    gpu = f", GPU {self.gpus[slot % len(self.gpus)]}" if self.cluster == "local" and self.gpus else ""
                    log.info("point %s: job %s%s; log %s", task.point.id, job.job_id, gpu, job.paths.stdout)
                    running[job] = (task, slot)
                    started(task)
                done = [job for job in running if job.done()]
                if not done:
                    if running:
                        time.sleep(poll)
                    continue
                for job in done:
                    task, slot = running.pop(job)
                    free.append(slot)
                    free.sort()
                    try:
                        point_id, record = job.result()
                        if point_id != task.point.id:
                            raise RuntimeError(f"the job returned point {point_id!r}")
                    except Exception as exc:  # noqa: BLE001 - any failure of the job fails its point
                        text = str(exc).strip()
                        log.error("point %s failed (log %s):\n%s", task.point.id, job.paths.stdout, text[-4000:])
                        failed.append((task, (text.splitlines() or ["no message"])[-1], str(job.paths.stdout)))
                        if pending:
                            log.error("starting no more points; waiting for the %d still running", len(running))
                        continue
                    finished(task, record)
                    recorded += 1
                    log.info("point %s finished (%d of %d this session)", task.point.id, recorded, len(tasks))
        except BaseException:
            for job in running:  # interrupted or failed here: stop what this driver started
                with contextlib.suppress(Exception):
                    job.cancel(check=False)
            raise
        if failed:
            lines = [f"  {t.point.id}: {why}" + (f" (log {path})" if path else "") for t, why, path in failed]
            waiting = f" ({len(pending)} not started)" if pending else ""
            raise SweepError(f"{len(failed)} point(s) failed{waiting}; every finished point is recorded, and running "
                             "the same command again resumes the rest from their checkpoints:\n" + "\n".join(lines))


# --- the command line ------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`knowpack sweep`'s options for where the points run."""
    g = p.add_argument_group("parallel sweeps (submitit: " + INSTALL + ")")
    g.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local (default): one point after another in this process; submitit: up to --workers "
                        "points at once, each in its own job (a process here, or a SLURM job with --cluster slurm)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="points at once (default: one per visible GPU here, or 1 without GPUs; on SLURM every "
                        "point at once, queued by the scheduler). Each local worker sees one GPU "
                        "(CUDA_VISIBLE_DEVICES), or on a CPU an equal share of the cores")
    g.add_argument("--cluster", choices=CLUSTERS,
                   help="submitit's backend: local processes on this machine (default) or slurm (sbatch)")
    g.add_argument("--timeout-min", type=int, metavar="MIN",
                   help=f"time limit of each point's job (default: none here, {SLURM_TIMEOUT_MIN} on SLURM); a job "
                        "that reaches it is requeued (up to 3 times) and resumes from its checkpoint")
    g.add_argument("--slurm-partition", metavar="NAME", help="SLURM partition")
    g.add_argument("--gpus-per-task", type=int, metavar="G", help="GPUs of each SLURM job (default 1; 0 for CPU jobs)")
    g.add_argument("--cpus-per-task", type=int, metavar="C", help="CPUs of each SLURM job")
    g.add_argument("--mem-gb", type=float, metavar="GB", help="memory of each SLURM job")
    g.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch setting, repeatable (e.g. account=proj, qos=high, constraint=a100, "
                        "exclude=node7)")


def from_arguments(args: argparse.Namespace) -> Executor:
    """The executor `knowpack sweep`'s options ask for; options that do not fit are an error."""
    from knowpack.config import _parse_value

    slurm: dict[str, Any] = {}
    for flag, key in (("slurm_partition", "partition"), ("gpus_per_task", "gpus_per_node"),
                      ("cpus_per_task", "cpus_per_task"), ("mem_gb", "mem_gb")):
        if getattr(args, flag, None) is not None:
            slurm[key] = getattr(args, flag)
    for item in getattr(args, "slurm_option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise KnowpackError(f"--slurm-option {item!r}: expected KEY=VALUE (e.g. account=proj)")
        slurm[key.strip().replace("-", "_")] = _parse_value(value)
    if args.executor == "local":
        given = [f"--{k}" for k in ("workers", "cluster", "timeout-min") if getattr(args, k.replace("-", "_"), None)
                 is not None] + (["SLURM options"] if slurm else [])
        if given:
            raise KnowpackError(f"{', '.join(given)}: these need --executor submitit (the local executor runs one "
                                "point after another in this process)")
        return Sequential()
    cluster = args.cluster or "local"
    if cluster == "local" and slurm:
        raise KnowpackError("--slurm-partition, --gpus-per-task, --cpus-per-task, --mem-gb and --slurm-option "
                            "need --cluster slurm")
    require_submitit()
    return Submitit(cluster=cluster, workers=args.workers, timeout_min=args.timeout_min, slurm=slurm)
