"""Markdown tables drawn from result records only: the papers' tables on the user's data.

A *record* is one finished run: a dict with `config` (either flat — `n_unknown`, `mixing`, `k`,
`method`, `seed` — or the nested run config with `compose.*`, `train.method`, `seed`) and
`metrics` (the record of `knowpack.evaluate.metrics.compute_metrics`). Runs that differ only in
their seed form one *condition* (method, n_unknown, mixing, k); cells show the mean over the seeds
with its 95% interval in brackets (Student t over the seeds), and `n=` the number of seeds; a
single run shows its own 95% interval from metrics.json where it has one. Undefined values print as "–".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from knowpack.evaluate import stats
from knowpack.report import paper

DASH = "–"


# --- records and conditions -------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Condition:
    method: str
    n_unknown: int
    mixing: str
    k: int

    @property
    def mix_label(self) -> str:
        return "none" if self.mixing == "none" else f"{self.mixing} k={self.k}"

    @property
    def label(self) -> str:
        return f"{self.method}, {self.n_unknown} UK, {self.mix_label}"


def config_value(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """`key` from a flat config, else from its place in the nested run config."""
    if key in config:
        return config[key]
    nested = {"n_unknown": ("compose", "n_unknown"), "mixing": ("compose", "mixing"), "k": ("compose", "k"),
              "method": ("train", "method"), "q": ("train", "loki", "q")}.get(key)
    cur: Any = config
    for part in nested or ():
        if not isinstance(cur, Mapping) or part not in cur:
            return default
        cur = cur[part]
    return cur if nested else default


def condition(record: Mapping[str, Any]) -> Condition:
    cfg = record.get("config") or {}
    return Condition(str(config_value(cfg, "method", "lora")), int(config_value(cfg, "n_unknown", 0) or 0),
                     str(config_value(cfg, "mixing", "none")), int(config_value(cfg, "k", 0) or 0))


def group(records: Iterable[Mapping[str, Any]]) -> dict[Condition, list[Mapping[str, Any]]]:
    out: dict[Condition, list[Mapping[str, Any]]] = {}
    for r in records:
        out.setdefault(condition(r), []).append(r)
    return dict(sorted(out.items()))


def headline(record: Mapping[str, Any], key: str) -> Any:
    return (record.get("metrics") or {}).get("headline", {}).get(key)


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std (None for one value), n) over the values that are not None."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None, 0
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return m, sd, len(xs)


# --- formatting --------------------------------------------------------------------------------


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return DASH
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return DASH
        return f"{x:.{digits}f}" if abs(x) < 1e5 else f"{x:.3g}"
    return str(x).replace("|", "\\|").replace("\n", " ")


def pct(x: float | None, digits: int = 1) -> str:
    return DASH if x is None else f"{100 * x:.{digits}f}%"


def cell(values: Iterable[float | None], digits: int = 3, scale: float = 1.0, sign: bool = False,
         show_n: bool = False, cis: Iterable[Sequence[float] | None] | None = None,
         bounds: tuple[float, float] | None = None) -> str:
    """Mean over seeds with its 95% t interval (clipped to `bounds`, e.g. (0, 1) for a share); one value
    with its own interval (`cis`) where given."""
    vals = list(values)
    m, _, n = mean_std(vals)
    if m is None:
        return DASH
    spec = f"{'+' if sign else ''}.{digits}f"
    text = format(m * scale, spec)
    ci = stats.seeds_interval([v for v in vals if v is not None])["ci95"] if n > 1 else None
    if n == 1 and cis is not None:
        own = [c for v, c in zip(vals, cis) if v is not None]
        ci = own[0] if own and own[0] else None
    if ci is not None:
        lo, hi = ci
        if bounds is not None:
            lo, hi = max(bounds[0], lo), min(bounds[1], hi)
        text += f" [{format(lo * scale, spec)}, {format(hi * scale, spec)}]"
    return f"{text} (n={n})" if n > 1 and show_n else text


def headline_ci(record: Mapping[str, Any], key: str) -> Sequence[float] | None:
    """The run's own 95% interval of a headline figure (metrics.json `headline.ci95`), or None."""
    return (headline(record, "ci95") or {}).get(key)


def hcell(runs: Sequence[Mapping[str, Any]], key: str, **kw: Any) -> str:
    """`cell` of a headline figure over runs, with the run's own interval when there is one run."""
    return cell((headline(r, key) for r in runs), cis=[headline_ci(r, key) for r in runs], bounds=(0.0, 1.0), **kw)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "| " + " | ".join(headers) + " |"
    rule = "|" + "|".join("---" for _ in headers) + "|"
    body = ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |" for row in rows]
    return "\n".join([head, rule, *body])


# --- the sweep tables --------------------------------------------------------------------------


def _grid(records: Sequence[Mapping[str, Any]], render: Callable[[Condition, list, bool], str],
          corner: str = "n_unknown") -> str:
    """One markdown table per method: rows n_unknown, columns mixing settings.

    When every cell has the same number of seeds it is said once under the table, not per cell.
    """
    groups = group(records)
    seeds = {len(runs) for runs in groups.values()}
    show_n = len(seeds) > 1
    parts = []
    for method in sorted({c.method for c in groups}):
        conds = [c for c in groups if c.method == method]
        cols = sorted({(c.mixing, c.k) for c in conds}, key=lambda mk: (mk[0] != "none", mk))
        ns = sorted({c.n_unknown for c in conds})
        rows = []
        for n in ns:
            row = [fmt(n)]
            for mixing, k in cols:
                cond = Condition(method, n, mixing, k)
                row.append(render(cond, groups[cond], show_n) if cond in groups else DASH)
            rows.append(row)
        headers = [corner] + [Condition(method, 0, m, k).mix_label for m, k in cols]
        parts.append(f"**method: {method}**\n\n" + md_table(headers, rows))
    if not parts:
        return "_no runs_"
    if not show_n and seeds != {1}:
        parts.append(f"_each cell: mean over {seeds.pop()} seeds [95% t interval]_")
    elif seeds == {1}:
        parts.append("_each cell: one run [its 95% interval, where metrics.json has one]_")
    return "\n\n".join(parts)


def table2(records: Sequence[Mapping[str, Any]]) -> str:
    """Paper Table 2: few-shot reliability by n_unknown and mixing; the paper's LoRA value in brackets."""

    def render(cond: Condition, runs: list, show_n: bool) -> str:
        text = hcell(runs, "reliability", show_n=show_n)
        ref = paper.kp_reliability(cond.n_unknown, cond.mixing, cond.k) if cond.method == "lora" else None
        return f"{text} [paper {ref:.2f}]" if ref is not None else text

    return _grid(records, render)


def table2_zero_shot(records: Sequence[Mapping[str, Any]]) -> str:
    return _grid(records, lambda c, runs, show_n: hcell(runs, "reliability_zero_shot", show_n=show_n))


def table3(records: Sequence[Mapping[str, Any]]) -> str:
    """Paper Table 3: positive / negative shift (fractions of the evaluation sample)."""

    def render(cond: Condition, runs: list, show_n: bool) -> str:
        pos = hcell(runs, "positive_shift", sign=True)
        neg = hcell(runs, "negative_shift")
        floor = cell(headline(r, "negative_shift_floor") for r in runs)
        n = f" (n={len(runs)})" if show_n and len(runs) > 1 else ""
        ref = paper.kp_shift(cond.n_unknown, cond.mixing, cond.k) if cond.method == "lora" else None
        ref_text = "" if ref is None else f" [paper +{ref['positive']:.3f} / −{ref['negative']:.3f}]"
        floor_text = "" if floor == DASH else f" (noise floor −{floor})"
        return (f"{pos} / −{neg}" if neg != DASH else f"{pos} / {DASH}") + floor_text + n + ref_text

    return _grid(records, render)


def benchmark_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Per condition and benchmark: base accuracy, accuracy after, absolute and relative drop."""
    groups = group(records)
    names = sorted({n for r in records for n in ((r.get("metrics") or {}).get("benchmarks") or {})})
    if not names:
        return "_no benchmark results in these runs_"
    rows = []
    for cond, runs in groups.items():
        for name in names:
            res = [((r.get("metrics") or {}).get("benchmarks") or {}).get(name) or {} for r in runs]
            res = [x for x in res if "absolute" in x]
            if not res:
                continue
            ref = paper.loki_capability_loss(cond.method, _q(runs[0], cond.method))
            rows.append([cond.label, fmt(len(res)), name, cell((x["before"] for x in res),
                                                               cis=[x.get("before_ci95") for x in res]),
                         cell((x["after"] for x in res), cis=[x.get("after_ci95") for x in res]),
                         cell((x["absolute"] for x in res), sign=True, cis=[x.get("absolute_ci95") for x in res]),
                         cell((x["relative"] for x in res), digits=2, scale=100, sign=True),
                         DASH if ref is None else f"{ref:.2f}%"])
    return md_table(["condition", "seeds", "benchmark", "base accuracy", "after", "absolute drop", "relative drop %",
                     "LoKI paper: capability loss (Llama-3.1-8B-Instruct on ToolACE, mean of 6 relative drops)"],
                    rows)


def _q(record: Mapping[str, Any], method: str) -> float | None:
    q = config_value(record.get("config") or {}, "q")
    return 10.0 if q is None and method == "loki" else q


def refusal_table(records: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for cond, runs in group(records).items():
        ref = paper.kp_table4(cond.n_unknown, cond.mixing, cond.k) if cond.method == "lora" else None
        share = None if ref is None else ref["refused"] / paper.KP_TEST_QUESTIONS
        rows.append([cond.label, fmt(len(runs)), hcell(runs, "refusal_before"), hcell(runs, "refusal_after"),
                     cell(((r["metrics"].get("refusals") or {}).get("change") for r in runs), sign=True),
                     DASH if ref is None else f"{int(ref['refused']):,} ({pct(share, 2)})"])
    base = paper.KP_TABLE4[None]["refused"]
    return md_table(["condition", "seeds", "refusal rate before", "after", "change",
                     f"paper: refused questions after (base {int(base):,} = "
                     f"{pct(base / paper.KP_TEST_QUESTIONS)} of {paper.KP_TEST_QUESTIONS:,})"], rows)


def collapse_table(records: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for cond, runs in group(records).items():
        after = [((r.get("metrics") or {}).get("answer_collapse") or {}).get("after") or {} for r in runs]
        top = [a["top"][0] for a in after if a.get("top")]
        top_text = DASH if not top else f"{top[0]['answer'] or '(empty)'} ({pct(top[0]['share'])})"
        rows.append([cond.label, fmt(len(runs)), cell((headline(r, "distinct_answers_before") for r in runs), digits=1),
                     cell((headline(r, "distinct_answers_after") for r in runs), digits=1),
                     cell((a.get("mean_frequency") for a in after), digits=2),
                     cell((a.get("std_frequency") for a in after), digits=2),
                     cell(headline(r, "normalised_entropy_before") for r in runs),
                     cell(headline(r, "normalised_entropy_after") for r in runs),
                     cell((headline(r, "exploded_after") for r in runs), digits=1), fmt(top_text)])
    return md_table(["condition", "seeds", "distinct before", "distinct after", "mean freq after", "std freq after",
                     "norm. entropy before", "after", "exploded after", "top answer (first seed)"], rows)


def other_metrics_table(records: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for cond, runs in group(records).items():
        rows.append([cond.label, fmt(len(runs)), hcell(runs, "reliability_ge_half"),
                     hcell(runs, "generalisation_zero_shot"), hcell(runs, "generalisation_few_shot"),
                     hcell(runs, "locality"), cell(headline(r, "bits_per_param") for r in runs)])
    return md_table(["condition", "seeds", "share P_greedy ≥ 0.5", "generalisation zero-shot", "generalisation few-shot",
                     "locality", "bits / trainable param"], rows)


def matched_reliability_table(records: Sequence[Mapping[str, Any]], threshold: float = 0.95) -> str:
    """Per method, over runs with reliability >= threshold: the most facts packed and the damage."""
    rows = []
    for method in sorted({condition(r).method for r in records}):
        ok = [r for r in records if condition(r).method == method
              and (headline(r, "reliability") or 0.0) >= threshold]
        if not ok:
            rows.append([method, "0", DASH, DASH, DASH])
            continue
        rows.append([method, fmt(len(ok)), fmt(max(condition(r).n_unknown for r in ok)),
                     cell(headline(r, "negative_shift") for r in ok),
                     cell((headline(r, "mean_benchmark_drop_relative") for r in ok), digits=2, scale=100)])
    return md_table(["method", f"runs with reliability ≥ {threshold:g}", "most facts packed",
                     "negative shift", "mean relative benchmark drop %"], rows)


# --- the papers' own tables, as references --------------------------------------------------------


def paper_table2() -> str:
    cols = [("none", 0), ("highly_known", 1), ("highly_known", 10), ("paraphrase", 1), ("paraphrase", 10)]
    ns = sorted({n for n, _, _ in paper.KP_TABLE2})
    rows = [[fmt(n)] + [f"{paper.KP_TABLE2[(n, m, k)]:.2f}" for m, k in cols] for n in ns]
    return md_table(["n_unknown"] + [Condition("lora", 0, m, k).mix_label for m, k in cols], rows)


def paper_table4() -> str:
    rows = []
    for key, v in paper.KP_TABLE4.items():
        label = "base model" if key is None else Condition("lora", *key).label
        rows.append([label, fmt(int(v["refused"])), fmt(int(v["unique"])), f"{v['mean']:.2f} ({v['std']:.2f})"])
    return md_table(["setting", "refused", "unique answers",
                     "mean (std) answer frequency [the paper heads it 'Mean (Variance)']"], rows)


def paper_loki() -> str:
    return md_table(["LoKI paper setting", "model, task", "where", "general-capability loss"],
                    paper.loki_reference_rows())


# --- whole reports -------------------------------------------------------------------------------

_SKIP = {"definition", "denominator", "denominator_counts", "headline", "per_fact_denominator",
         "per_fact_denominator_counts", "categories", "counts", "top", "exploded", "moves"}


def _explain(d: Mapping[str, Any]) -> list[str]:
    out = []
    if d.get("definition"):
        out.append(f"*Definition:* {d['definition']}.")
    if "denominator" in d:
        out.append(f"*Denominator:* {fmt(d['denominator'])} {d.get('denominator_counts', '')}".rstrip() + ".")
    if "per_fact_denominator" in d:
        out.append(f"*Per-fact denominator:* {fmt(d['per_fact_denominator'])} "
                   f"{d.get('per_fact_denominator_counts', '')}".rstrip() + ".")
    return out


def _fields(d: Mapping[str, Any]) -> str:
    rows = []
    for key, value in d.items():
        if key in _SKIP:
            continue
        if isinstance(value, list):
            shown = ", ".join(fmt(v) for v in value[:10]) + (f", … ({len(value)} in all)" if len(value) > 10 else "")
            rows.append([key, f"{len(value)}: {shown}" if value else "0"])
        elif isinstance(value, Mapping):
            rows.append([key, _value(value)])
        else:
            rows.append([key, fmt(value, 4)])
    return md_table(["field", "value"], rows)


def _section(title: str, d: Mapping[str, Any] | None) -> str:
    if not d:
        return f"### {title}\n\n_not measured in this run_"
    return "\n\n".join([f"### {title}", _fields(d), *_explain(d)])


def _answers(items: Sequence[Mapping[str, Any]]) -> str:
    if not items:
        return "_none_"
    return md_table(["answer", "count", "share"],
                    [[fmt(i["answer"] or "(empty)"), fmt(i["count"]), pct(i["share"])] for i in items])


def transition_md(shift: Mapping[str, Any]) -> str:
    cats = shift["categories"]
    short = [paper_short(c) for c in cats]
    rows = [[f"**{short[i]}**"] + [fmt(x) for x in row] + [fmt(sum(row))] for i, row in enumerate(shift["counts"])]
    return md_table(["before ↓ / after →", *short, "total"], rows)


def _sources() -> str:
    return "\n".join(f"- {s['name']}: {s['source']}" for s in paper.sources())


def _value(v: Any) -> str:
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={fmt(x, 4)}" for k, x in v.items()) or DASH
    return fmt(v, 4)


def paper_short(category: str) -> str:
    return {"HighlyKnown": "HK", "MaybeKnown": "MK", "WeaklyKnown": "WK", "Unknown": "UK"}.get(category, category)


def run_report_md(metrics: Mapping[str, Any], config: Mapping[str, Any] | None = None,
                  plots: Sequence[str] = (), title: str = "knowpack run report") -> str:
    """The single-run report: every metric with its definition and denominator."""
    config = config or {}
    record = {"config": config, "metrics": metrics}
    cond = condition(record)
    parts = [f"# {title}", ""]
    if config:
        info = [["method", cond.method], ["n_unknown", fmt(cond.n_unknown)], ["mixing", cond.mix_label],
                ["seed", fmt(config.get("seed"))], ["model", fmt(config.get("model"))],
                ["facts", fmt(config.get("facts"))]]
        parts += ["## Run", md_table(["setting", "value"], info), ""]
    h = metrics.get("headline") or {}
    ci = h.get("ci95") or {}

    def interval(key: str) -> str:
        c = ci.get(key)
        if isinstance(c, Mapping):
            return ", ".join(f"{k} [{fmt(v[0], 4)}, {fmt(v[1], 4)}]" for k, v in c.items() if v) or DASH
        return DASH if not c else f"[{fmt(c[0], 4)}, {fmt(c[1], 4)}]"

    rows = [[k, _value(v), interval(k)] for k, v in h.items() if k not in ("ci95", "ci_definition")]
    parts += ["## Headline", md_table(["metric", "value", "95% interval"], rows),
              f"*Intervals:* {h.get('ci_definition', 'not recorded in this run')}.", ""]
    rel = metrics.get("reliability") or {}
    parts += ["## Reliability (trained facts)", _section("Few-shot probe", rel.get("few_shot")),
              _section("Zero-shot, training format", rel.get("zero_shot"))]
    ref = paper.kp_reliability(cond.n_unknown, cond.mixing, cond.k) if cond.method == "lora" else None
    parts.append(f"Paper (Table 2, LoRA on Llama-3.1-8B-Instruct, same n_unknown and mixing): "
                 f"{ref:.2f}." if ref is not None else "Paper: no Table 2 cell for this setting.")
    gen = metrics.get("generalisation") or {}
    parts += ["## Generalisation (held-out paraphrases)", _section("Zero-shot", gen.get("zero_shot")),
              _section("Few-shot", gen.get("few_shot"))]
    shift = metrics.get("knowledge_shift")
    parts += ["## Knowledge shift (untrained evaluation facts)"]
    if shift:
        parts += [transition_md(shift), _fields(shift), *_explain(shift),
                  "Moves: " + (", ".join(f"{k} {v}" for k, v in shift.get("moves", {}).items()) or "none") + "."]
    ref3 = paper.kp_shift(cond.n_unknown, cond.mixing, cond.k) if cond.method == "lora" else None
    parts += [f"Paper (Table 3, LoRA on Llama-3.1-8B-Instruct, same n_unknown and mixing): positive shift "
              f"{ref3['positive']:.3f}, negative shift {ref3['negative']:.3f} (three categories, no WeaklyKnown)."
              if ref3 is not None else "Paper: no Table 3 cell for this setting."]
    col = metrics.get("answer_collapse") or {}
    parts += ["## Answer collapse (evaluation facts)"]
    for side in ("before", "after"):
        if col.get(side):
            parts += [_section(f"{side.capitalize()} training", col[side]), f"Top answers {side}:",
                      _answers(col[side].get("top", [])), f"Exploded answers {side}:", _answers(col[side]["exploded"])]
    if col:
        parts += ["Exploded after but not before:", _answers(col.get("newly_exploded") or [])]
    parts += ["## Refusals", _section("Refusal rate", metrics.get("refusals")),
              f"Paper: the base Llama-3.1-8B-Instruct refused in {pct(paper.KP_BASE_REFUSAL_SHARE, 0)} of cases "
              "(§5.4, Table 4)."]
    parts += ["## Locality", _section("Unchanged answers", metrics.get("locality"))]
    parts += ["## Benchmarks"]
    benches = metrics.get("benchmarks") or {}
    if not benches:
        parts.append("_no benchmarks in this run_")
    for name, b in benches.items():
        parts.append(_section(name, b))
    loss = paper.loki_capability_loss(cond.method, _q(record, cond.method))
    if loss is not None:
        parts.append(f"LoKI paper (Table 2), general-capability loss of {cond.method} on Llama-3.1-8B-Instruct "
                     f"fine-tuned on ToolACE: {loss:.2f}% ({paper.LOKI_CAPABILITY_DEFINITION}; compare with the "
                     "mean of the relative drops × 100).")
    parts += ["## Capacity", _section("Bits per trainable parameter", metrics.get("capacity"))]
    if plots:
        parts += ["## Plots", *[f"![{p}]({p})" for p in plots]]
    parts += ["## Sources", _sources()]
    return "\n\n".join(p for p in parts if p != "") + "\n"


def sweep_report_md(records: Sequence[Mapping[str, Any]], plots: Sequence[str] = (), *, skipped: int = 0,
                    threshold: float = 0.95, title: str = "knowpack sweep report") -> str:
    """The sweep report: the papers' tables on the user's data, with the papers' numbers beside them."""
    n_cond = len(group(records))
    parts = [f"# {title}",
             f"{len(records)} finished runs in {n_cond} conditions (method, n_unknown, mixing, k); cells are "
             "means over the seeds of a condition with a 95% Student t interval over them in brackets (a single run: "
             "its own 95% interval from metrics.json)."
             + (f" {skipped} record(s) without metrics were skipped." if skipped else ""),
             "## Reliability by n_unknown and mixing (paper Table 2)",
             "Few-shot reliability: mean P_greedy over the trained facts. In brackets, LoRA cells: the paper's value "
             f"for the same n_unknown and mixing ({paper.KP_SETUP}).",
             table2(records),
             "Zero-shot reliability (training format):", table2_zero_shot(records),
             "## Positive / negative shift (paper Table 3)",
             "Fractions of the untrained evaluation sample that moved up / down a knowledge category.",
             "In brackets after the negative shift: its noise floor, the shift the base model shows against itself under "
             "another sampling seed.",
             table3(records), f"Paper: {paper.KP_TABLE3_NOTE}.",
             "## Benchmark drop", benchmark_table(records),
             "## Refusals", refusal_table(records),
             "## Answer collapse", collapse_table(records),
             "## Generalisation, locality, capacity", other_metrics_table(records),
             "## Damage at matched reliability", matched_reliability_table(records, threshold)]
    if plots:
        parts += ["## Plots", *[f"![{p}]({p})" for p in plots]]
    parts += ["## The papers' own numbers",
              f"Knowledge packing, Table 2 (reliability; {paper.KP_SETUP}):", paper_table2(),
              "Knowledge packing, Table 4 (refusals and answer diversity over the paper's 21,036-question test set; "
              "absolute counts, not comparable in scale with ours):", paper_table4(),
              f"LoKI (general-capability loss = {paper.LOKI_CAPABILITY_DEFINITION}):", paper_loki(),
              "## Sources", _sources()]
    return "\n\n".join(parts) + "\n"
