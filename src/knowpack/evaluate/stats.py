"""95% intervals for every share and difference knowpack reports (pure functions, no model calls).

    wilson(k, n)                       a share of independent units (facts, questions)
    cluster_share(correct, totals)     a share of answers grouped by fact (prompts of one fact are correlated):
                                       percentile bootstrap over facts
    mean_interval(values)              a mean of per-unit values (mean P_greedy): bootstrap over units
    paired_difference(before, after)   after - before on the same units (benchmark items, facts): paired
                                       bootstrap over units, with McNemar's exact test for 0/1 outcomes
    seeds_interval(values)             a mean over seeds: Student t interval

Bootstraps use `B = 2000` resamples from a generator seeded by a fixed number, so the same inputs
give the same interval in every run (intervals are part of the reproducible metrics.json).
Every function returns a dict holding `ci95: [low, high]` and `method` (what the interval is).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20250101
#: two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def _round(x: float) -> float:
    return float(round(x, 6))


def wilson(k: int, n: int) -> dict[str, Any]:
    """Wilson score interval of the share k/n (n independent units); `ci95` null when n = 0."""
    if n <= 0:
        return {"ci95": None, "method": "Wilson score interval (undefined: no units)"}
    p = k / n
    den = 1 + Z95 ** 2 / n
    centre = (p + Z95 ** 2 / (2 * n)) / den
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / den
    return {"ci95": [_round(max(0.0, centre - half)), _round(min(1.0, centre + half))],
            "method": f"Wilson score interval over {n} units"}


def _rng() -> np.random.Generator:
    return np.random.default_rng(BOOTSTRAP_SEED)


def _percentiles(samples: np.ndarray) -> list[float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [_round(float(lo)), _round(float(hi))]


def cluster_share(correct: Sequence[float], totals: Sequence[float]) -> dict[str, Any]:
    """Interval of sum(correct) / sum(totals) over units (facts) each holding several answers:
    percentile bootstrap over units, which keeps a fact's answers together."""
    c, t = np.asarray(correct, dtype=float), np.asarray(totals, dtype=float)
    if len(c) != len(t):
        raise ValueError(f"{len(c)} counts for {len(t)} totals")
    if len(c) == 0 or t.sum() == 0:
        return {"ci95": None, "method": "bootstrap over units (undefined: no answers)"}
    idx = _rng().integers(0, len(c), size=(BOOTSTRAP_RESAMPLES, len(c)))
    num, den = c[idx].sum(1), t[idx].sum(1)
    ratios = np.divide(num, den, out=np.full_like(num, c.sum() / t.sum()), where=den > 0)
    return {"ci95": _percentiles(ratios),
            "method": f"percentile bootstrap over {len(c)} units ({BOOTSTRAP_RESAMPLES} resamples), answers of a "
                      "unit kept together"}


def mean_interval(values: Sequence[float]) -> dict[str, Any]:
    """Interval of the mean of per-unit values: percentile bootstrap over units."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return {"ci95": None, "method": "bootstrap over units (undefined: no units)"}
    means = v[_rng().integers(0, len(v), size=(BOOTSTRAP_RESAMPLES, len(v)))].mean(1)
    return {"ci95": _percentiles(means),
            "method": f"percentile bootstrap of the mean over {len(v)} units ({BOOTSTRAP_RESAMPLES} resamples)"}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (1 -> 0) and c (0 -> 1)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_difference(before: Sequence[float], after: Sequence[float]) -> dict[str, Any]:
    """Interval of mean(after) - mean(before) on the same units: percentile bootstrap over units (the
    pairs kept together); for 0/1 outcomes also McNemar's exact p-value and the discordant counts."""
    x, y = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} values before and {len(y)} after: a paired difference needs the same units")
    if len(x) == 0:
        return {"ci95": None, "method": "paired bootstrap (undefined: no units)"}
    d = y - x
    idx = _rng().integers(0, len(d), size=(BOOTSTRAP_RESAMPLES, len(d)))
    out: dict[str, Any] = {"ci95": _percentiles(d[idx].mean(1)),
                           "method": f"paired percentile bootstrap over {len(d)} units ({BOOTSTRAP_RESAMPLES} "
                                     "resamples)"}
    if set(np.unique(np.concatenate([x, y]))) <= {0.0, 1.0}:
        b, c = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
        out.update({"lost": b, "gained": c, "mcnemar_p": _round(mcnemar_exact(b, c)),
                    "method": out["method"] + "; McNemar's exact test on the discordant units"})
    return out


def seeds_interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean over seeds with a Student t 95% interval (one value per seed); `ci95` null for one seed."""
    v = [float(x) for x in values if x is not None]
    n = len(v)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0, "method": "t interval over seeds (no values)"}
    mean = sum(v) / n
    if n == 1:
        return {"mean": _round(mean), "ci95": None, "n": 1, "method": "t interval over seeds (one seed: none)"}
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else Z95
    half = t * sd / math.sqrt(n)
    return {"mean": _round(mean), "ci95": [_round(mean - half), _round(mean + half)], "n": n,
            "method": f"Student t 95% interval over {n} seeds"}


def interval_text(ci: Sequence[float] | None, *, pct: bool = True, digits: int = 1) -> str:
    """'[a, b]' for a report line ('[n/a]' when undefined)."""
    if not ci:
        return "[n/a]"
    if pct:
        return f"[{ci[0] * 100:.{digits}f}, {ci[1] * 100:.{digits}f}]%"
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
