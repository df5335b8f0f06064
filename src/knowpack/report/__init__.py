"""Reports (SPEC §7): markdown and plots drawn from results files only, never from a model.

    from knowpack.report import write_run_report, write_sweep_report
    write_run_report("runs/demo")        # runs/demo/metrics.json (+ config.yaml) -> report.md, transitions.png
    write_sweep_report("sweeps/grid")    # sweeps/grid/results.jsonl -> report.md + 4 plots

A sweep record (one line of `results.jsonl`) is a JSON object with at least `config` (the run's
resolved config, nested as saved or flat) and `metrics` (the `compute_metrics` record); `point`,
when present, identifies the grid point, and a later line for the same point replaces an earlier
one. Records without `metrics` (failed runs) are counted and skipped. A torn last line — a sweep
killed mid-append — is ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from knowpack.io import read_json, write_text
from knowpack.report import plots
from knowpack.report.tables import run_report_md, sweep_report_md

log = logging.getLogger(__name__)

REPORT = "report.md"
METRICS = "metrics.json"
CONFIG = "config.yaml"
RESULTS = "results.jsonl"

__all__ = ["write_run_report", "write_sweep_report", "read_sweep_records", "run_report_md", "sweep_report_md"]


def write_run_report(run_dir: str | Path) -> Path:
    """Write `report.md` and the transition heat-map into `run_dir` from its `metrics.json`."""
    run = Path(run_dir)
    metrics_path = run / METRICS
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path} not found; evaluate the run first (knowpack run / knowpack evaluate)")
    metrics = read_json(metrics_path)
    config: dict[str, Any] = {}
    if (run / CONFIG).exists():
        config = yaml.safe_load((run / CONFIG).read_text(encoding="utf-8")) or {}
    written = []
    shift = metrics.get("knowledge_shift")
    if shift and plots.plot_transitions([("this run", shift)], run / "transitions.png"):
        written.append("transitions.png")
    path = write_text(run / REPORT, run_report_md(metrics, config, written, title=f"knowpack run report: {run.name}"))
    log.info("run report written to %s", path)
    return path


def read_sweep_records(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], int]:
    """(records with metrics, number skipped) from `sweep_dir/results.jsonl`; the last line per point wins."""
    from knowpack.sweep import read_results

    path = Path(sweep_dir) / RESULTS
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; run the sweep first (knowpack sweep)")
    latest: dict[Any, dict[str, Any]] = {}
    for i, rec in enumerate(read_results(path)):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: record {i + 1} is not a JSON object")
        latest[rec.get("point", i)] = rec  # a re-run point replaces its earlier line
    records = [r for r in latest.values() if isinstance(r.get("metrics"), dict)]
    skipped = len(latest) - len(records)
    if skipped:
        log.warning("%s: %d record(s) without metrics skipped", path, skipped)
    return records, skipped


def write_sweep_report(sweep_dir: str | Path, *, threshold: float = 0.95) -> Path:
    """Write `report.md` and plots into `sweep_dir` from its `results.jsonl`; returns the report path."""
    out = Path(sweep_dir)
    records, skipped = read_sweep_records(out)
    written = []
    for name, fn in (("reliability.png", plots.plot_reliability), ("damage.png", plots.plot_damage),
                     ("matched_reliability.png", plots.plot_matched)):
        if fn(records, out / name):
            written.append(name)
    if plots.plot_transitions(plots.sweep_transitions(records), out / "transitions.png"):
        written.append("transitions.png")
    text = sweep_report_md(records, written, skipped=skipped, threshold=threshold,
                           title=f"knowpack sweep report: {out.name}")
    path = write_text(out / REPORT, text)
    log.info("sweep report written to %s (%d runs)", path, len(records))
    return path
