"""Capacity search: how many facts can a method pack before the damage budget is spent?

    knowpack capacity configs/lora-world.yaml --max-negative-shift 0.01 --max-benchmark-drop 0.01

Runs the config at growing `compose.n_unknown` (doubling from `start`, and always the cap itself),
then bisects between the largest passing size and the smallest failing one. A size passes when
reliability (mean P_greedy of the trained facts under the few-shot probe) is at least
`min_reliability`, the negative knowledge shift on untrained facts is within its budget, and every
benchmark's relative drop is within the benchmark budget (one benchmark's gain never hides
another's damage; the mean drop is reported beside it).

Soundness rules:
- every stored run is judged again under the *current* budget (`capacity.jsonl` keeps the figures,
  not a verdict to trust), so one directory can be searched under several budgets;
- a damage figure that was not measured is an error naming it (or, for benchmarks, an explicit
  `no_benchmark_budget`), never a zero;
- the cap is `max_n` or the number of Unknown facts the probe found, whichever is smaller, and it is
  always tried; the result says which one capped the search;
- every size tried is recorded with its figures and verdict;
- pass/fail is not assumed monotone in n: a size that passes above the first failing one is
  reported as a non-monotone result, and the search never bisects across it.
Every measured size is one run directory and one line of `capacity.jsonl`, so a killed search
resumes without redoing finished sizes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from knowpack.errors import KnowpackError
from knowpack.io import append_jsonl, write_json
from knowpack.sweep import read_results

log = logging.getLogger(__name__)


@dataclass
class Budget:
    max_negative_shift: float
    max_benchmark_drop: float | None  # None: no benchmark budget (an explicit choice, never a default)
    min_reliability: float = 0.95


def verdict(metrics: dict[str, Any], budget: Budget) -> tuple[bool, list[str]]:
    """Whether one run's metrics pass the budget, with a reason per failed condition.

    Raises KnowpackError when a figure the budget needs was not measured.
    """
    headline = metrics.get("headline") or {}
    n = headline.get("n_trained")
    reasons = []
    rel = headline.get("reliability")
    if rel is None:
        raise KnowpackError(f"n_unknown={n}: the run reports no reliability; cannot judge it")
    if rel < budget.min_reliability:
        reasons.append(f"reliability {rel:.4f} < {budget.min_reliability}")
    neg = headline.get("negative_shift")
    if neg is None:
        raise KnowpackError(f"n_unknown={n}: the run measured no knowledge shift (compose.eval_size is 0?); "
                            "the negative-shift budget needs an evaluation sample: set compose.eval_size > 0")
    if neg > budget.max_negative_shift:
        reasons.append(f"negative shift {neg:.4f} > {budget.max_negative_shift}")
    if budget.max_benchmark_drop is not None:
        benchmarks = metrics.get("benchmarks") or {}
        if not benchmarks:
            raise KnowpackError(f"n_unknown={n}: no benchmark was measured (eval.mc, eval.qa and eval.harness give "
                                "none for this model), so the benchmark budget cannot be checked; give a "
                                "benchmark (e.g. eval.mc=[mmlu.jsonl]) or pass --no-benchmark-budget")
        for name, b in sorted(benchmarks.items()):
            if "missing" in b:
                raise KnowpackError(f"n_unknown={n}: benchmark '{name}' was scored only {b['missing']!r} "
                                    "training was missing; cannot judge its drop")
            drop = b.get("relative")
            if drop is None:
                raise KnowpackError(f"n_unknown={n}: benchmark '{name}' has base accuracy 0, so its relative drop "
                                    "is undefined; leave it out of eval or pass --no-benchmark-budget")
            if drop > budget.max_benchmark_drop:
                reasons.append(f"{name} drop {drop:.4f} > {budget.max_benchmark_drop}")
    return not reasons, reasons


def _record(n: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """What capacity.jsonl keeps of a run: its figures (never a verdict to reuse)."""
    benchmarks = {k: {x: v.get(x) for x in ("before", "after", "absolute", "relative", "missing") if x in v}
                  for k, v in (metrics.get("benchmarks") or {}).items()}
    return {"n_unknown": n, "headline": metrics.get("headline") or {}, "benchmarks": benchmarks}


def _judged(rec: dict[str, Any], budget: Budget) -> dict[str, Any]:
    ok, reasons = verdict({"headline": rec["headline"], "benchmarks": rec.get("benchmarks")}, budget)
    h = rec["headline"]
    return {"n_unknown": rec["n_unknown"], "pass": ok, "reasons": reasons,
            "reliability": h.get("reliability"), "negative_shift": h.get("negative_shift"),
            "negative_shift_floor": h.get("negative_shift_floor"),
            "benchmark_drop_relative": {k: v.get("relative") for k, v in (rec.get("benchmarks") or {}).items()},
            "mean_benchmark_drop_relative": h.get("mean_benchmark_drop_relative"),
            "bits_per_param": h.get("bits_per_param")}


def unknown_pool(cfg: Any) -> int:
    """How many Unknown facts the base model's probe finds for this config (cached probe)."""
    from knowpack.models import load_model
    from knowpack.runs import cached_probe, load_run_facts, model_path, probe_facts_of

    cfg = cfg.resolved()
    facts = load_run_facts(cfg)
    model, tok = load_model(model_path(cfg), device=cfg.device, dtype=cfg.dtype,
                            trust_remote_code=cfg.trust_remote_code)
    rows, _ = cached_probe(cfg, model, tok, probe_facts_of(cfg, facts), exemplars=facts, progress=False)
    return sum(r["category"] == "Unknown" for r in rows)


def capacity_search(cfg: Any, out_dir: str | Path, budget: Budget, *, start: int = 10, max_n: int | None = None,
                    resolution: float = 0.1, run: Callable[[Any, Path], dict[str, Any]] | None = None,
                    pool: int | None = None,
                    on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Largest n_unknown that passes the budget (see the module docstring); writes capacity.json.

    `pool` is the number of Unknown facts available (default: probe the base model); `run` runs one
    size and returns its metrics (default: a full run in `out_dir/n=<n>`).
    """
    from knowpack.runs import full_run

    if start < 1:
        raise KnowpackError(f"--start must be >= 1, got {start}")
    run = run or (lambda c, d: full_run(c, d, progress=False))
    out = Path(out_dir)
    log_path = out / "capacity.jsonl"
    stored = {r["n_unknown"]: r for r in read_results(log_path, repair=True) if "headline" in r}
    pool = unknown_pool(cfg) if pool is None else pool
    if pool < 1:
        raise KnowpackError("the probe found no Unknown facts: there is nothing to pack")
    cap = min(max_n, pool) if max_n is not None else pool
    capped_by = "max_n" if max_n is not None and max_n <= pool else "unknown pool"
    judged: dict[int, dict[str, Any]] = {}

    def measure(n: int) -> dict[str, Any]:
        if n not in stored:
            metrics = run(replace(cfg, compose=replace(cfg.compose, n_unknown=n)), out / f"n={n}")
            stored[n] = _record(n, metrics)
            append_jsonl(log_path, stored[n])
        if n not in judged:
            judged[n] = _judged(stored[n], budget)
            if on_step:
                on_step(judged[n])
        return judged[n]

    # grow: start, 2 start, ... and the cap itself, until a size fails
    sizes, n = [], min(start, cap)
    while True:
        sizes.append(n)
        if n >= cap:
            break
        n = min(n * 2, cap)
    lo, hi = 0, None  # lo: largest passing size; hi: smallest failing size
    for n in sizes:
        if measure(n)["pass"]:
            lo = n
        else:
            hi = n
            break
    # bisect between them, never across a measured size that contradicts monotonicity
    while hi is not None and hi - lo > max(1, int(lo * resolution)):
        mid = (lo + hi) // 2
        if mid in (lo, hi):
            break
        if measure(mid)["pass"]:
            lo = mid
        else:
            hi = mid
    for n in sorted(stored):  # sizes measured in an earlier search of this directory are judged too
        measure(n)
    tried = [judged[n] for n in sorted(judged)]
    first_fail = min((r["n_unknown"] for r in tried if not r["pass"]), default=None)
    above = [r["n_unknown"] for r in tried if r["pass"] and first_fail is not None and r["n_unknown"] > first_fail]
    capacity = max((r["n_unknown"] for r in tried if r["pass"] and (first_fail is None or r["n_unknown"] < first_fail)),
                   default=0)
    best = judged.get(capacity, {})
    result = {
        "capacity": capacity,
        "first_failing": first_fail,
        "monotone": not above,
        "passing_above_first_failure": above,
        "cap": cap, "capped_by": capped_by, "unknown_pool": pool, "max_n": max_n,
        "reached_cap": capacity == cap,
        "budget": asdict(budget),
        "reliability": best.get("reliability"),
        "bits_per_param": best.get("bits_per_param"),
        "tried": tried,
        "definition": "largest n_unknown whose run reached the reliability threshold with its negative shift and "
                      "every benchmark's relative drop within the budget, below the smallest failing size; sizes "
                      "between capacity and first_failing were bisected to the given resolution. A passing size "
                      "above a failing one makes the result non-monotone (monotone: false): then the capacity is "
                      "a lower bound taken below the first failure, not a threshold.",
        "method": cfg.train.method,
    }
    if above:
        log.warning("capacity search: sizes %s pass although %d fails; the result is not monotone in n",
                    above, first_fail)
    write_json(out / "capacity.json", result)
    return result
