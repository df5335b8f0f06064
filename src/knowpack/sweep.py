"""Sweeps: a grid of runs, one line per finished run in `results.jsonl`, resumable at any moment.

A sweep config is a run config plus a `grid:` mapping of dotted keys to lists of values::

    grid:
      compose.n_unknown: [1, 10, 50]
      compose.mixing: [none, highly_known]
      seed: [0, 1, 2]

Combinations that a product cannot express go in `points:`, a list of override mappings (crossed
with `grid:` when both are given)::

    points:
      - {compose.mixing: none}
      - {compose.mixing: highly_known, compose.k: 10}
      - {train.method: loki}

Every grid point is validated before anything runs. Each point runs in `SWEEP/runs/<point id>/`;
when it finishes, one JSON line (config, metrics, timings) is appended to `SWEEP/results.jsonl` and
fsynced. Killed at any moment, the sweep restarts by dropping a torn last line, skipping every point
already in `results.jsonl`, and resuming the interrupted point from its checkpoint.

Points run one after another here, or several at once in worker processes or SLURM jobs
(`knowpack.executors`, through submitit); either way this process alone writes `results.jsonl`, a
second driver on the same directory is refused, and each run directory has one writer at a time.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from knowpack.config import _Ctx, _read_yaml, load_config, to_dict
from knowpack.errors import ConfigError
from knowpack.io import append_jsonl, write_text

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"


@dataclass
class GridPoint:
    id: str
    overrides: dict[str, Any]
    config: Any  # RunConfig


def _fmt(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def point_id(overrides: dict[str, Any]) -> str:
    """A readable, stable directory name for a grid point."""
    if not overrides:
        return "base"
    parts = [f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in overrides.items()]
    name = ",".join(parts)
    safe = "".join(c if c.isalnum() or c in "=,._-" else "_" for c in name)
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:6]
    return f"{safe[:80]}-{digest}"


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def load_sweep(path: str | Path, overrides: Iterable[str] = (), config_cls: type | None = None, *,
               data: dict[str, Any] | None = None) -> tuple[Any, list[GridPoint]]:
    """(base config, grid points); every point is validated, and all problems are reported together.

    `data` is the file's content already read (a caller that took its own section out of it).
    """
    from knowpack.runs import RunConfig

    cls = config_cls or RunConfig
    # The config reader, not plain yaml.safe_load: `1e-3` is a float, keys given twice are errors,
    # and syntax errors name the line.
    ctx = _Ctx()
    raw = dict(data) if data is not None else _read_yaml(Path(path), ctx)
    if ctx.problems:
        raise ConfigError(ctx.problems, source=str(path))
    if not isinstance(raw, dict):
        raise ConfigError(["the top level must be a mapping"], source=str(path))
    grid = raw.pop("grid", None) or {}
    explicit = raw.pop("points", None) or [{}]
    problems = []
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(["grid: expected a mapping of dotted keys to non-empty lists"], source=str(path))
    if not isinstance(explicit, list) or not all(isinstance(p, dict) for p in explicit):
        raise ConfigError(["points: expected a list of mappings of dotted keys to values"], source=str(path))
    try:
        base = load_config(cls, path=None, data=raw, overrides=list(overrides))
    except ConfigError as exc:
        raise ConfigError(exc.problems, source=str(path)) from None
    points = []
    for combo in [{**g, **e} for e in explicit for g in expand_grid(grid)]:
        try:
            nested: dict[str, Any] = {}
            for key, value in combo.items():
                cur = nested
                *head, last = key.split(".")
                for h in head:
                    cur = cur.setdefault(h, {})
                cur[last] = value
            merged = _deep_merge(to_dict(base), nested)
            cfg = load_config(cls, data=merged)
        except ConfigError as exc:
            problems += [f"grid point {combo}: {p}" for p in exc.problems]
            continue
        points.append(GridPoint(point_id(combo), combo, cfg))
    if problems:
        raise ConfigError(problems, source=str(path))
    ids = [p.id for p in points]
    if len(set(ids)) != len(ids):
        raise ConfigError(["grid has repeated points"], source=str(path))
    return base, points


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_results(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Every complete record of `results.jsonl`. A torn last line (a kill mid-append) is dropped,
    and with `repair` the file is rewritten without it, so the next append starts on a fresh line."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    records, good_end, pos = [], 0, 0
    for raw in data.split(b"\n"):
        end = pos + len(raw) + 1
        if end <= len(data):  # a line with its newline
            try:
                records.append(json.loads(raw.decode("utf-8")))
                good_end = end
            except (json.JSONDecodeError, UnicodeDecodeError):
                if raw.strip():
                    raise ValueError(f"{path}: line {len(records) + 1} is not valid JSON; the file was edited "
                                     "by hand or corrupted") from None
                good_end = end
        pos = end
    if repair and good_end < len(data):
        log.warning("%s: dropping a torn last line left by an interrupted sweep", path)
        write_text(path, data[:good_end].decode("utf-8"))
    return records


def run_sweep(config_path: str | Path, out_dir: str | Path, *, overrides: Iterable[str] = (),
              run_point: Callable[[Any, Path], dict[str, Any]] | None = None,
              on_point: Callable[[int, int, GridPoint, str], None] | None = None,
              executor: Any = None, config_cls: type | None = None) -> list[dict[str, Any]]:
    """Run every unfinished grid point; return all records of `results.jsonl`.

    `run_point(config, run_dir) -> record` runs one point (default: `knowpack.runs.full_run_record`).
    `executor` says where the points run (default: one after another in this process; see
    `knowpack.executors`); wherever they run, this process alone appends their records.
    `config_cls` is the config each point gets (default: `RunConfig`), as in `load_sweep`.
    """
    from knowpack.config import save_config

    base, points = load_sweep(config_path, overrides, config_cls)
    out = Path(out_dir)

    def header() -> None:
        save_config(base, out / "sweep_base.yaml")
        write_text(out / "sweep_grid.json", json.dumps([{"id": p.id, "overrides": p.overrides} for p in points],
                                                       indent=2) + "\n")

    return run_points(points, out, run_point=run_point, on_point=on_point, executor=executor, header=header)


def run_points(points: list[GridPoint], out_dir: str | Path, *,
               run_point: Callable[[Any, Path], dict[str, Any]] | None = None,
               on_point: Callable[[int, int, GridPoint, str], None] | None = None,
               executor: Any = None, header: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Run every point not yet in `out_dir/results.jsonl` (each in `runs/<id>`, under its lock) and record
    each exactly once; returns all records. `header` writes the sweep's own files under the driver lock."""
    from knowpack.executors import Sequential, Task, driver_lock

    executor = executor or Sequential()
    executor.check(points)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with driver_lock(out):  # before the results are read (and a torn line repaired): one driver at a time
        if header is not None:
            header()
        results_path = out / RESULTS
        done = {r.get("point") for r in read_results(results_path, repair=True)}
        if run_point is None:
            from knowpack.runs import full_run_record as run_point  # noqa: N813
        tasks = []
        for i, point in enumerate(points, 1):
            if point.id in done:
                if on_point:
                    on_point(i, len(points), point, "done")
                continue
            tasks.append(Task(i, point, out / "runs" / point.id, out / "locks" / f"{point.id}.lock"))

        def started(task: Task) -> None:
            if on_point:
                on_point(task.index, len(points), task.point, "running")

        def finished(task: Task, record: dict[str, Any]) -> None:
            if task.point.id in done:  # cannot happen with one driver; never write a second line
                log.warning("point %s is already recorded; not recording it again", task.point.id)
                return
            append_jsonl(results_path, {"point": task.point.id, "overrides": task.point.overrides, **record})
            done.add(task.point.id)

        executor.run(tasks, run_point, started, finished)
    return read_results(results_path)
