"""Capacity search: how many facts can a method pack before the damage budget is spent?

    knowpack capacity configs/lora-world.yaml --max-negative-shift 0.01 --max-benchmark-drop 0.01

Runs the config at growing `compose.n_unknown` (doubling from `start`), then bisects between the
largest passing and the smallest failing size. A size passes when reliability (mean P_greedy of the
trained facts under the few-shot probe) is at least `min_reliability` and both damage measures are
within budget: negative knowledge shift on untrained facts, and the mean relative benchmark drop.
Every measured size is one run directory and one line of `capacity.jsonl`, so a killed search
resumes without redoing finished sizes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from knowpack.io import append_jsonl, write_json
from knowpack.sweep import read_results

log = logging.getLogger(__name__)


@dataclass
class Budget:
    max_negative_shift: float
    max_benchmark_drop: float
    min_reliability: float = 0.95


def verdict(headline: dict[str, Any], budget: Budget) -> tuple[bool, list[str]]:
    reasons = []
    rel = headline.get("reliability")
    if rel is None or rel < budget.min_reliability:
        reasons.append(f"reliability {rel} < {budget.min_reliability}")
    neg = headline.get("negative_shift") or 0.0
    if neg > budget.max_negative_shift:
        reasons.append(f"negative shift {neg:.4f} > {budget.max_negative_shift}")
    drop = headline.get("mean_benchmark_drop_relative") or 0.0
    if drop > budget.max_benchmark_drop:
        reasons.append(f"benchmark drop {drop:.4f} > {budget.max_benchmark_drop}")
    return not reasons, reasons


def capacity_search(cfg: Any, out_dir: str | Path, budget: Budget, *, start: int = 10, max_n: int | None = None,
                    resolution: float = 0.1, run: Callable[[Any, Path], dict[str, Any]] | None = None,
                    on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Largest n_unknown that passes the budget (see the module docstring); writes capacity.json."""
    from knowpack.runs import full_run

    run = run or (lambda c, d: full_run(c, d, progress=False))
    out = Path(out_dir)
    log_path = out / "capacity.jsonl"
    measured = {r["n_unknown"]: r for r in read_results(log_path, repair=True)}

    def measure(n: int) -> dict[str, Any]:
        if n in measured:
            return measured[n]
        metrics = run(replace(cfg, compose=replace(cfg.compose, n_unknown=n)), out / f"n={n}")
        ok, reasons = verdict(metrics["headline"], budget)
        rec = {"n_unknown": n, "pass": ok, "reasons": reasons, "headline": metrics["headline"]}
        append_jsonl(log_path, rec)
        measured[n] = rec
        if on_step:
            on_step(rec)
        return rec

    lo, hi = 0, None  # lo: largest passing size; hi: smallest failing size
    n = start
    while hi is None:
        if max_n is not None and n > max_n:
            break
        if measure(n)["pass"]:
            lo, n = n, n * 2
        else:
            hi = n
    if hi is not None:
        while hi - lo > max(1, int(lo * resolution)):
            mid = (lo + hi) // 2
            if mid in (lo, hi):
                break
            if measure(mid)["pass"]:
                lo = mid
            else:
                hi = mid
    best = measured.get(lo)
    result = {
        "capacity": lo, "first_failing": hi, "budget": budget.__dict__,
        "bits_per_param": (best or {}).get("headline", {}).get("bits_per_param"),
        "reliability": (best or {}).get("headline", {}).get("reliability"),
        "measured": sorted(measured.values(), key=lambda r: r["n_unknown"]),
        "definition": "largest n_unknown whose run reached the reliability threshold within the damage "
                      "budget; sizes between capacity and first_failing were bisected to the given resolution",
        "method": cfg.train.method,
    }
    write_json(out / "capacity.json", result)
    return result
