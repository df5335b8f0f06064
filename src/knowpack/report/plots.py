"""Plots drawn from result records only (matplotlib's Agg canvas, PNG, written atomically).

    from knowpack.report import plots
    plots.plot_reliability(records, out / "reliability.png")

Each function returns the path it wrote, or None when the records hold nothing to plot. Error bars
are the sample standard deviation over seeds (none for a single seed). Records are those of
`knowpack.report.tables` (config + metrics).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from knowpack.io import write_bytes
from knowpack.report.tables import condition, group, headline, mean_std, paper_short

log = logging.getLogger(__name__)

DPI = 110
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _save(fig: Figure, path: str | Path) -> Path:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)  # the Agg canvas, whatever backend pyplot uses elsewhere; no display needed
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return write_bytes(path, buf.getvalue())


def _series(records: Sequence[Mapping[str, Any]], key: str, scale: float = 1.0
            ) -> dict[tuple[str, str], list[tuple[int, float, float | None, int]]]:
    """(method, mixing label) -> [(n_unknown, mean, std, seeds)] for headline `key`."""
    out: dict[tuple[str, str], list[tuple[int, float, float | None, int]]] = {}
    for cond, runs in group(records).items():
        m, sd, n = mean_std(headline(r, key) for r in runs)
        if m is None:
            continue
        out.setdefault((cond.method, cond.mix_label), []).append(
            (cond.n_unknown, m * scale, None if sd is None else sd * scale, n))
    return {k: sorted(v) for k, v in sorted(out.items())}


def _x_axis(ax: Any, xs: Sequence[int]) -> bool:
    """Log x when the numbers of facts span a factor of 10 or more; returns whether it is log."""
    xs = sorted(set(x for x in xs if x > 0))
    log_x = len(xs) > 1 and xs[-1] / xs[0] >= 10
    if log_x:
        ax.set_xscale("log")
    if xs and len(xs) <= 8:
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:,}" for x in xs])
        ax.minorticks_off()
    if len(xs) == 1:
        ax.set_xlim(xs[0] * 0.5, xs[0] * 1.5)
    return log_x


def _colors(*series: Mapping[tuple[str, str], list]) -> dict[tuple[str, str], str]:
    """One colour per (method, mixing), the same in every panel of a figure."""
    keys = sorted({k for s in series for k in s})
    return {k: f"C{i % 10}" for i, k in enumerate(keys)}


def _draw_lines(ax: Any, series: Mapping[tuple[str, str], list], ylabel: str,
                colors: Mapping[tuple[str, str], str] | None = None) -> None:
    colors = colors or _colors(series)
    methods = sorted({m for m, _ in series})
    xs = [x for pts in series.values() for x, *_ in pts]
    log_x = _x_axis(ax, xs)
    span = (max(xs) - min(xs)) if xs else 0
    for i, ((method, mix), pts) in enumerate(series.items()):
        # a small horizontal offset per series keeps overlapping error bars apart
        offset = (i - (len(series) - 1) / 2)
        x = [p[0] * (1 + 0.03 * offset) if log_x else p[0] + 0.01 * offset * (span or 1) for p in pts]
        y = [p[1] for p in pts]
        err = [p[2] or 0.0 for p in pts]
        ax.errorbar(x, y, yerr=err if any(err) else None, marker=MARKERS[methods.index(method) % len(MARKERS)],
                    linestyle="-" if len(pts) > 1 else "none", capsize=3, markersize=6,
                    color=colors[(method, mix)], label=f"{method} · {mix}")
    ax.set_xlabel("number of Unknown facts trained (n_unknown)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_reliability(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Few-shot reliability vs number of facts, one line per (method, mixing), seeds as error bars."""
    series = _series(records, "reliability")
    if not series:
        return None
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    _draw_lines(ax, series, "reliability (mean P_greedy, trained facts)")
    ax.set_ylim(-0.03, 1.05)
    ax.axhline(0.95, color="0.5", linestyle=":", linewidth=1, label="reliability 0.95")
    ax.set_title("Reliability vs number of facts")
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    return _save(fig, path)


def plot_damage(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Negative shift and mean relative benchmark drop vs number of facts."""
    neg = _series(records, "negative_shift")
    drop = _series(records, "mean_benchmark_drop_relative", scale=100)
    if not neg and not drop:
        return None
    fig = Figure(figsize=(12, 4.8))
    ax1, ax2 = fig.subplots(1, 2)
    colors = _colors(neg, drop)
    if neg:
        _draw_lines(ax1, neg, "negative shift (share of evaluation facts)", colors)
        ax1.axhline(0, color="0.5", linewidth=1)
    else:
        _no_data(ax1, "no knowledge-shift results")
    ax1.set_title("Negative knowledge shift")
    if drop:
        _draw_lines(ax2, drop, "relative benchmark drop, % (mean over benchmarks)", colors)
        ax2.axhline(0, color="0.5", linewidth=1)
    else:
        _no_data(ax2, "no benchmark results")
    ax2.set_title("Benchmark drop")
    legend: dict[str, Any] = {}
    for ax in (ax1, ax2):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    labels, handles = list(legend), list(legend.values())
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8,
               bbox_to_anchor=(0.5, -0.02 - 0.045 * ((len(labels) - 1) // 4)))
    fig.suptitle("Damage vs number of facts")
    fig.subplots_adjust(bottom=0.2 + 0.05 * ((len(labels) - 1) // 4), wspace=0.25)
    return _save(fig, path)


def _heatmap(ax: Any, counts: Sequence[Sequence[int]], categories: Sequence[str], title: str) -> Any:
    short = [paper_short(c) for c in categories]
    im = ax.imshow(counts, cmap="Blues", vmin=0)
    peak = max((max(r) for r in counts), default=0)
    total = sum(sum(r) for r in counts)
    for i, row in enumerate(counts):
        for j, v in enumerate(row):
            share = f"\n{v / total:.0%}" if total else ""
            ax.text(j, i, f"{v}{share}", ha="center", va="center", fontsize=9,
                    color="white" if peak and v > peak / 2 else "black")
    ax.set_xticks(range(len(short)), short)
    ax.set_yticks(range(len(short)), short)
    ax.set_xlabel("after training")
    ax.set_ylabel("before training")
    ax.set_title(title, fontsize=10)
    return im


def plot_transitions(matrices: Sequence[tuple[str, Mapping[str, Any]]], path: str | Path) -> Path | None:
    """Annotated 4x4 category heat-maps, one per (title, knowledge_shift metric) pair."""
    matrices = [(t, m) for t, m in matrices if m and m.get("counts")][:6]
    if not matrices:
        return None
    ncols = min(3, len(matrices))
    nrows = (len(matrices) + ncols - 1) // ncols
    fig = Figure(figsize=(max(6.0, 4.3 * ncols), 4.2 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (title, shift) in zip(axes.flat, matrices):
        sub = (f"{title}\n+{shift.get('positive_shift') or 0:.3f} / −{shift.get('negative_shift') or 0:.3f} "
               f"(n={shift.get('denominator', '?')})")
        _heatmap(ax, shift["counts"], shift["categories"], sub)
    for ax in list(axes.flat)[len(matrices):]:
        ax.set_visible(False)
    fig.suptitle("Knowledge category transitions, counts and shares (rows: before, columns: after)\n"
                 "below the diagonal: positive shift; above it: negative shift", fontsize=10)
    return _save(fig, path)


def sweep_transitions(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Per (method, mixing): the largest n_unknown, counts summed over its seeds."""
    best: dict[tuple[str, str], Any] = {}
    for cond, runs in group(records).items():
        key = (cond.method, cond.mix_label)
        if key not in best or cond.n_unknown > best[key][0].n_unknown:
            best[key] = (cond, runs)
    out = []
    for cond, runs in best.values():
        shifts = [(r.get("metrics") or {}).get("knowledge_shift") for r in runs]
        shifts = [s for s in shifts if s and s.get("counts")]
        if not shifts:
            continue
        size = len(shifts[0]["counts"])
        counts = [[sum(s["counts"][i][j] for s in shifts) for j in range(size)] for i in range(size)]
        n = sum(s["denominator"] for s in shifts)
        out.append((f"{cond.label} ({len(shifts)} seed{'s' if len(shifts) > 1 else ''})",
                    {"counts": counts, "categories": shifts[0]["categories"], "denominator": n,
                     "positive_shift": sum(s["positive_count"] for s in shifts) / n if n else None,
                     "negative_shift": sum(s["negative_count"] for s in shifts) / n if n else None}))
    return out


def plot_matched(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Damage at matched reliability: one point per run, one marker per method (e.g. LoKI vs LoRA)."""
    pts = [(condition(r), headline(r, "reliability"), headline(r, "negative_shift"),
            headline(r, "mean_benchmark_drop_relative")) for r in records]
    pts = [p for p in pts if p[1] is not None]
    if not pts:
        return None
    methods = sorted({p[0].method for p in pts})
    fig = Figure(figsize=(12, 4.8))
    axes = fig.subplots(1, 2)
    panels = [(2, 1.0, "negative shift (share of evaluation facts)", "no knowledge-shift results"),
              (3, 100.0, "relative benchmark drop, % (mean over benchmarks)", "no benchmark results")]
    for ax, (idx, scale, ylabel, empty) in zip(axes, panels):
        drawn = False
        for m_i, method in enumerate(methods):
            sel = [p for p in pts if p[0].method == method and p[idx] is not None]
            if not sel:
                continue
            drawn = True
            ax.scatter([p[1] for p in sel], [p[idx] * scale for p in sel], marker=MARKERS[m_i % len(MARKERS)],
                       s=45, alpha=0.8, label=method)
            if len(pts) <= 30:
                for p in sel:
                    ax.annotate(f"{p[0].n_unknown}", (p[1], p[idx] * scale), textcoords="offset points",
                                xytext=(4, 4), fontsize=7, color="0.3")
        if drawn:
            ax.set_xlabel("reliability (mean P_greedy, trained facts)")
            ax.set_ylabel(ylabel)
            ax.set_xlim(-0.03, 1.05)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8, title="method", title_fontsize=8)
        else:
            _no_data(ax, empty)
    axes[0].set_title("Negative shift at matched reliability")
    axes[1].set_title("Benchmark drop at matched reliability")
    if len(pts) <= 30:
        fig.text(0.5, -0.01, "point labels: number of Unknown facts trained", ha="center", fontsize=8, color="0.3")
    return _save(fig, path)
