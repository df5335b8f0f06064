"""Does the embedded world reproduce the papers' findings? One table: finding, paper, world, verdict.

    python bench/fidelity.py                      # the shipped world, 3 seeds (hours on a 2-core CPU)
    python bench/fidelity.py --reduced            # minutes: 1 seed, 12 facts, LoRA and LoKI at fixed rates
    python bench/fidelity.py --fixed-rates        # 3 seeds at full size, LoRA and LoKI at the config's `rates`
    make fidelity

Every finding is measured on the world with the tool's own commands, cached and resumable under
`--out` (default runs/fidelity): a matched comparison (knowpack compare: LoRA plain, +1 and +10 HighlyKnown,
+10 paraphrases, DoRA, PiSSA, LoKI with its controls, every point trained to one zero-shot reliability
target at a searched learning rate), a capacity curve (LoRA at growing numbers of Unknown facts, each
trained to the same target within a budget that grows with the fact count: `--curve-epochs` passes over
the facts, at least `--curve-min-steps` steps; a size that cannot reach the target in its budget is
where the curve falls), and the zeroing ablation (knowpack ablate).

Verdicts compare two figures per seed (paired by seed): the mean difference with a Student t 95%
interval over seeds; "holds" when the interval lies on the paper's side of zero, "does not hold"
when it lies on the other side, "within noise" when it holds zero. With one seed (--reduced) every
comparison whose sign cannot be judged says so ("one seed: no interval").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from knowpack.evaluate import stats
from knowpack.io import write_json, write_text

PAPER = {
    "capacity": "Pletenev Table 2: reliability ~1 up to 500 Unknown facts, falling at 3000 with +10 HighlyKnown (0.48)",
    "neg_vs_pos": "Pletenev Table 3: negative shift above positive in almost every cell (e.g. 50 UK: 0.148 vs 0.060)",
    "hk_lowers_neg": "Pletenev Table 3 / §5: mixing in HighlyKnown facts lowers the negative shift (100 UK: 0.172 -> 0.151)",
    "para_generalises": "Pletenev §5: paraphrase mixing raises reliability on held-out paraphrases",
    "collapse": "Pletenev §5.4, Table 4: fewer distinct answers, some 'exploded' (e.g. 10 UK: 48,136 -> 22,804 unique)",
    "refusals": "Pletenev §5.5, Table 4: refusals fall after training (3,189 -> 0 for 10 UK)",
    "loki_vs_lora": "LoKI Table 2: general-capability loss LoKI q=10 0.34% vs LoRA 16.11%, DoRA 4.92%, PiSSA 48.93%",
    "zero_high_vs_low": "LoKI Table 5a: zeroing the 1% highest-attributed rows costs 36.73%, the lowest 11.35%",
    "balanced_vs_global": "LoKI Table 5b: layer-balanced 8.86% vs global 30.48-39.04% (Qwen2.5-0.5B)",
    "lowest_vs_random": "LoKI's premise: its lowest rows damage less than random ones",
}


def verdict(diffs: list[float], expect_positive: bool = True) -> tuple[str, dict[str, Any]]:
    """'holds' / 'does not hold' / 'within noise' for per-seed differences (paper's direction: > 0)."""
    s = stats.seeds_interval(diffs)
    if s["mean"] is None:
        return "not measured", s
    ci = s["ci95"]
    if ci is None:
        if s["mean"] == 0:
            return "no difference, one seed: no interval", s
        sign = s["mean"] > 0 if expect_positive else s["mean"] < 0
        return ("same direction, one seed: no interval" if sign else "other direction, one seed: no interval"), s
    lo, hi = ci if expect_positive else (-ci[1], -ci[0])
    return ("holds" if lo > 0 else "does not hold" if hi < 0 else "within noise"), s


# --- the measurements ------------------------------------------------------------------------


def compare_config(base: dict[str, Any], seeds: list[int], target: float, max_steps: int, methods: list[str],
                   lrs: dict[str, list[float]] | None, rates: dict[str, float] | None = None) -> dict[str, Any]:
    """The comparison's config; with `rates` (method -> rate) no rate search runs and each point trains at its rate."""
    def at(method: str, **extra: Any) -> dict[str, Any]:
        return {"train.method": method, **({"train.lr": rates[method]} if rates and method in rates else {}), **extra}

    # +k HighlyKnown at the paper's k = 1 and 10: +10 (11x the examples) may not reach the target within the
    # comparison's cap, +1 gives the finding a point that does
    hk = [at("lora", **{"compose.mixing": "highly_known", "compose.k": k, "compose.reuse_known": True}) for k in (1, 10)]
    points = [at("lora"), *hk, at("lora", **{"compose.mixing": "paraphrase", "compose.k": 10})]
    points += [at(m) for m in methods if m != "lora"]
    return {**base, "points": points,
            "compare": {"target": target, "max_steps": max_steps, "seeds": seeds, "controls": "loki" in methods,
                        "lr_search": not rates, **({"lrs": lrs} if lrs and not rates else {})}}


def curve_steps(n: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """The capacity curve's step cap for n facts: `epochs` passes over them, at least `min_steps`. A fixed
    number of epochs alone gives few facts too few steps to learn anything (10 facts, 40 epochs: 40 steps,
    reliability 0.00 on the world), which reads as a curve rising with size instead of a capacity."""
    return max(min_steps, epochs * math.ceil(n / batch_size))


def fit_sizes(sizes: list[int], pool: int) -> tuple[list[int], list[int]]:
    """The curve's sizes that the base model's Unknown pool can supply, a size beyond it replaced by the
    whole pool (the largest curve point there is); and the sizes that were replaced."""
    fitted: list[int] = []
    for n in sizes:
        m = min(n, pool)
        if m not in fitted:
            fitted.append(m)
    return fitted, [n for n in sizes if n > pool]


def run_all(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    from knowpack import capacity
    from knowpack.ablate import run_ablation
    from knowpack.compare import CompareSettings, run_compare, to_target
    from knowpack.config import load_config
    from knowpack.runs import RunConfig
    from knowpack.sweep import GridPoint, run_points

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(Path(args.config).read_text())
    base.pop("points", None), base.pop("grid", None)
    config_lrs = (base.pop("compare", None) or {}).get("lrs")
    rates = base.pop("rates", None) if args.reduced or args.fixed_rates else None
    base.pop("rates", None)
    for key in args.override:
        k, _, v = key.partition("=")
        cur = base
        *head, last = k.split(".")
        for h in head:
            cur = cur.setdefault(h, {})
        cur[last] = yaml.safe_load(v)
    seeds = list(range(args.seeds))
    cfg_path = out / "compare.yaml"
    lrs = json.loads(args.lrs) if args.lrs else config_lrs
    cfg_path.write_text(yaml.safe_dump(compare_config(base, seeds, args.target, args.max_steps, args.methods, lrs,
                                                      rates),
                                       sort_keys=False))
    say(f"matched comparison ({', '.join(args.methods)}; +1 and +10 HighlyKnown, +10 paraphrases; {len(seeds)} seed(s))")
    table = run_compare(cfg_path, out / "compare", say=say)

    run_cfg = load_config(RunConfig, data=base)
    curve_points = []
    sizes = list(args.sizes)
    if sizes:
        pool = capacity.unknown_pool(run_cfg)  # the base probe's Unknown facts (cached)
        sizes, beyond = fit_sizes(sizes, pool)
        if beyond:
            say(f"capacity curve: the base model has {pool} Unknown facts; n_unknown = "
                f"{', '.join(map(str, beyond))} replaced by {pool}")
    # seed-major: a run stopped part-way leaves whole curves for the seeds it finished, not half of each
    for seed in seeds:
        for n in sizes:
            steps = curve_steps(n, run_cfg.train.batch_size, args.curve_epochs, args.curve_min_steps)
            # trained to the target as the comparison's points are, checked at the config's own interval
            budget = CompareSettings(target=args.target, max_steps=steps, check_every=None)
            cfg = load_config(RunConfig, data=base, overrides=[f"compose.n_unknown={n}", "train.method=lora"])
            curve_points.append(GridPoint(f"n={n}-seed={seed}", {"n_unknown": n, "seed": seed, "max_steps": steps},
                                          to_target(cfg, budget, seed=seed)))
    if curve_points:
        say(f"capacity curve: LoRA at n_unknown = {', '.join(map(str, sizes))}, each to zero-shot reliability "
            f">= {args.target:.0%} within {args.curve_epochs} epochs (at least {args.curve_min_steps} steps)")
        curve = run_points(curve_points, out / "curve",
                           on_point=lambda i, k, p, s: say(f"  [{i}/{k}] {p.id}") if s == "running" else None)
    else:
        say("capacity curve: no sizes given (--sizes), not measured")
        curve = []

    say(f"zeroing ablation at q = {args.zero_q:g}%")
    ablation = cached_ablation(run_cfg, out / "ablate", args.zero_q, args.known, say, run=run_ablation)
    return {"compare": table, "curve": curve, "ablation": ablation, "seeds": seeds}


ABLATION_KEY = "fidelity_key.json"


def ablation_key(run_cfg: Any, q: float, known: int) -> dict[str, Any]:
    """What the zeroing ablation depends on: the run settings (model, facts, evaluation, LoKI), q and the
    known-fact sample size; seeds do not enter it (one model, the base)."""
    from knowpack.config import config_hash

    return {"config": config_hash(run_cfg), "q": q, "known": known}


def cached_ablation(run_cfg: Any, out: Path, q: float, known: int, say: Callable[[str], None], *,
                    run: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The ablation's result, reused from `out/ablation.json` when its key file says it ran with these
    settings. The key is written after the result, so an ablation cut short is run again."""
    key = ablation_key(run_cfg, q, known)
    key_path, result_path = out / ABLATION_KEY, out / "ablation.json"
    if key_path.exists() and result_path.exists() and json.loads(key_path.read_text()) == key:
        say(f"  reusing {result_path} (same settings)")
        return json.loads(result_path.read_text())
    result = run(run_cfg, out, q=q, known=known, progress=False)
    write_json(key_path, key)
    return result


# --- the findings ------------------------------------------------------------------------------


def _rows_by_label(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["label"]: r for r in table["rows"]}


def findings(results: dict[str, Any], records: list[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """Every finding with its paper figure, the world's value and interval, and the verdict."""
    by_point: dict[str, dict[int, dict[str, Any]]] = {}
    for r in records:
        o = r.get("overrides") or {}
        by_point.setdefault(o.get("compare_point"), {})[o.get("seed")] = r["metrics"]
    labels = {row["id"]: row["label"] for row in results["compare"]["rows"]}
    reached = {row["id"]: row["reached_target"] for row in results["compare"]["rows"]}
    ids = {v: k for k, v in labels.items()}

    def fig(label: str, key: str, section: str = "headline") -> dict[int, float]:
        pid = ids.get(label)
        if pid is None:
            return {}
        out = {}
        for seed, m in by_point.get(pid, {}).items():
            h = m.get("headline") or {}
            v = h.get(key) if section == "headline" else None
            if v is not None and (h.get("reliability_zero_shot") or 0) >= target:
                out[seed] = float(v)
        return out

    def paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
        return [a[s] - b[s] for s in sorted(set(a) & set(b))]

    def row(key: str, finding: str, world: str, diffs: list[float], positive: bool = True,
            note: str = "") -> dict[str, Any]:
        v, s = verdict(diffs, positive)
        return {"key": key, "finding": finding, "paper": PAPER[key], "world": world, "difference": s,
                "verdict": v + (f" ({note})" if note else "")}

    def fmt(s: dict[str, Any], pct: bool = True) -> str:
        if s.get("mean") is None:
            return "n/a"
        m, ci = s["mean"], s.get("ci95")
        if pct:
            return f"{m:+.1%}" + (f" [{ci[0]:+.1%}, {ci[1]:+.1%}]" if ci else "")
        return f"{m:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")

    plain = [lab for lab in ids if lab.startswith("lora r=") and "," not in lab and "(" not in lab]
    plain = plain[0] if plain else "lora r=1"
    hks = sorted((lab for lab in ids if "highly_known" in lab), key=_mixing_k)
    para = next((lab for lab in ids if "paraphrase" in lab), None)
    rows = []

    # capacity curve
    curve: dict[int, list[float]] = {}
    for r in results["curve"]:
        curve.setdefault(r["overrides"]["n_unknown"], []).append(r["metrics"]["headline"]["reliability_zero_shot"])
    sizes = sorted(curve)
    cells = [f"{n}: {stats.seeds_interval(curve[n])['mean']:.2f} ({sum(v >= target for v in curve[n])}/{len(curve[n])} "
             "at the target)" for n in sizes]
    if len(sizes) >= 2:
        lo, hi = curve[sizes[0]], curve[sizes[-1]]
        k = min(len(lo), len(hi))
        rows.append(row("capacity", "reliability stays near 1 for few Unknown facts and falls beyond some number",
                        "zero-shot reliability by n_unknown (each trained to the target within its budget): " + ", ".join(cells),
                        [a - b for a, b in zip(lo[:k], hi[:k])]))
    # shifts
    neg, pos = fig(plain, "negative_shift"), fig(plain, "positive_shift")
    d = paired(neg, pos)
    rows.append(row("neg_vs_pos", "negative shift exceeds positive shift (plain LoRA)",
                    f"negative - positive = {fmt(stats.seeds_interval(d))}", d))
    for hk in hks:
        k = _mixing_k(hk)
        d = paired(neg, fig(hk, "negative_shift"))
        rows.append(row("hk_lowers_neg", f"+{k} HighlyKnown lowers the negative shift at matched reliability",
                        f"plain - (+{k} HK) = {fmt(stats.seeds_interval(d))}", d,
                        note="" if reached.get(ids[hk]) else f"the +{k} HK point missed the target on some seed"))
    if para:
        d = paired(fig(para, "generalisation_zero_shot"), fig(plain, "generalisation_zero_shot"))
        rows.append(row("para_generalises", "+10 paraphrases raise held-out-paraphrase generalisation",
                        f"(+10 paraphrases) - plain = {fmt(stats.seeds_interval(d))}", d))
    # collapse and refusals (plain LoRA, after vs before)
    d = paired(fig(plain, "distinct_answers_before"), fig(plain, "distinct_answers_after"))
    rows.append(row("collapse", "answer collapse after plain injection (fewer distinct answers)",
                    f"distinct answers before - after = {fmt(stats.seeds_interval(d), pct=False)}", d))
    # the refusal questions (which the base model answers "I don't know"), else refusals among the
    # answers to the evaluation facts
    key = "refusal_facts" if fig(plain, "refusal_facts_before") else "refusal"
    d = paired(fig(plain, f"{key}_before"), fig(plain, f"{key}_after"))
    rows.append(row("refusals", "lost refusals after plain injection",
                    f"{'refusal questions' if key == 'refusal_facts' else 'evaluation answers'} refused, before - "
                    f"after = {fmt(stats.seeds_interval(d))}", d))
    # methods
    loki = next((lab for lab in ids if lab.startswith("loki q=") and "(" not in lab and "rows" not in lab), None)
    if loki:
        # every plain LoRA-family point, the parameter-matched LoRA control among them
        for other in [lab for lab in ids if lab.split(" ")[0] in ("lora", "dora", "pissa") and "," not in lab]:
            d = paired(fig(other, "mean_benchmark_drop_relative"), fig(loki, "mean_benchmark_drop_relative"))
            rows.append(row("loki_vs_lora", f"LoKI damages general capability less than {other}",
                            f"{other} - LoKI mean relative benchmark drop = {fmt(stats.seeds_interval(d))}", d))
        rnd = next((lab for lab in ids if "random rows" in lab), None)
        if rnd:
            d = paired(fig(rnd, "mean_benchmark_drop_relative"), fig(loki, "mean_benchmark_drop_relative"))
            rows.append(row("lowest_vs_random", "LoKI's lowest rows damage less than random rows",
                            f"random - lowest mean relative benchmark drop = {fmt(stats.seeds_interval(d))}", d))
    # zeroing ablation (one model, no seeds: paired over the questions)
    strat = results["ablation"]["strategies"]
    if "layer_balanced_highest" in strat and "layer_balanced_lowest" in strat:
        hi, lo = strat["layer_balanced_highest"], strat["layer_balanced_lowest"]
        diffs = _question_diffs(results["ablation"], "layer_balanced_lowest", "layer_balanced_highest")
        rows.append(row("zero_high_vs_low", "zeroing the highest-attributed rows costs more than the lowest",
                        f"capability loss highest {hi['capability_loss_pct']:.2f}% vs lowest "
                        f"{lo['capability_loss_pct']:.2f}% (q={results['ablation']['q']:g}%)", diffs,
                        note="interval over benchmark questions, paired"))
    if "global_lowest" in strat and "layer_balanced_lowest" in strat:
        g, lo = strat["global_lowest"], strat["layer_balanced_lowest"]
        rows.append(row("balanced_vs_global", "layer-balanced selection damages less than global selection",
                        f"capability loss global lowest {g['capability_loss_pct']:.2f}% vs layer-balanced "
                        f"{lo['capability_loss_pct']:.2f}%",
                        _question_diffs(results["ablation"], "layer_balanced_lowest", "global_lowest"),
                        note="interval over benchmark questions, paired"))
    return rows


def _mixing_k(label: str) -> int:
    """k of a mixing point's label ("lora r=1, +10 highly_known" -> 10)."""
    return int(label.split("+", 1)[1].split(" ", 1)[0])


def _question_diffs(result: dict[str, Any], better: str, worse: str) -> list[float]:
    """Per question: (correct after zeroing `better`'s rows) - (after zeroing `worse`'s rows)."""
    from knowpack.ablate import paired_outcomes

    xs, ys = paired_outcomes(result, better, worse)
    return [x - y for x, y in zip(xs, ys)]


def curve_table(curve: list[dict[str, Any]], target: float) -> str:
    """The capacity curve per size: its step cap, the steps run, the seeds that reached the target, and
    zero-shot reliability, negative shift and mean relative benchmark drop (mean [t 95% interval over seeds])."""
    by_n: dict[int, list[dict[str, Any]]] = {}
    for r in curve:
        by_n.setdefault(r["overrides"]["n_unknown"], []).append(r)
    lines = [f"Capacity curve: LoRA trained on n Unknown facts to zero-shot reliability >= {target:.0%} within the "
             "step cap (mean [Student t 95% interval] over seeds)", "",
             "| Unknown facts | step cap | steps | seeds reaching the target | zero-shot reliability | negative shift "
             "| mean benchmark drop |", "|---|---|---|---|---|---|---|"]

    def cell(values: list[float]) -> str:
        s = stats.seeds_interval(values)
        if s["mean"] is None:
            return "n/a"
        return f"{s['mean']:.1%}" + (f" [{s['ci95'][0]:.1%}, {s['ci95'][1]:.1%}]" if s["ci95"] else "")

    for n in sorted(by_n):
        rs = by_n[n]
        heads = [r["metrics"]["headline"] for r in rs]
        steps = [r["metrics"]["run"]["steps"] for r in rs]
        reached = sum((h.get("reliability_zero_shot") or 0) >= target for h in heads)
        caps = sorted({r["overrides"].get("max_steps") for r in rs}, key=str)
        lines.append(f"| {n:,} | {'/'.join(map(str, caps))} | {sum(steps) / len(steps):,.0f} ({min(steps):,}-{max(steps):,}) "
                     f"| {reached}/{len(rs)} | {cell([h['reliability_zero_shot'] for h in heads])} "
                     f"| {cell([h['negative_shift'] for h in heads])} "
                     f"| {cell([h['mean_benchmark_drop_relative'] for h in heads])} |")
    return "\n".join(lines)


def table_text(rows: list[dict[str, Any]]) -> str:
    lines = ["| finding | paper | world (mean [95% interval]) | verdict |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['finding']} | {r['paper']} | {r['world']} | {r['verdict']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/fidelity-world.yaml", help="the run settings (model, facts, training)")
    p.add_argument("--out", default="runs/fidelity")
    p.add_argument("--seeds", type=int, default=None, help="seeds per point (default 3; 1 with --reduced)")
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--max-steps", type=int, default=1500)
    p.add_argument("--methods", nargs="+", default=["lora", "dora", "pissa", "loki"])
    p.add_argument("--lrs", help="candidate rates per method as JSON (default: the config's compare rates)")
    p.add_argument("--sizes", type=int, nargs="*", default=[10, 50, 200, 500, 1000],
                   help="Unknown-fact counts of the capacity curve (none: no curve; a count beyond the base "
                        "model's Unknown facts becomes all of them)")
    p.add_argument("--curve-epochs", type=int, default=40, help="the capacity curve's budget: passes over the facts")
    p.add_argument("--curve-min-steps", type=int, default=1500,
                   help="the capacity curve's budget: at least this many steps (the comparison's cap)")
    p.add_argument("--zero-q", type=float, default=1.0)
    p.add_argument("--known", type=int, default=300)
    p.add_argument("--reduced", action="store_true", help="1 seed, 12 facts, LoRA and LoKI at the config's fixed rates")
    p.add_argument("--fixed-rates", action="store_true",
                   help="no rate search: every point trains at the config's `rates` (the search's earlier choices), "
                        "so only the methods given a rate there are compared")
    p.add_argument("override", nargs="*", help="config overrides key=value")
    args = p.parse_args(argv)
    if args.reduced:  # 1 seed, LoRA and LoKI at the config's `rates`, 12 facts, a short curve: minutes
        args.seeds, args.sizes, args.methods = args.seeds or 1, [5, 20], ["lora", "loki"]
        args.target, args.max_steps, args.known, args.zero_q, args.curve_epochs = 0.9, 600, 100, 5.0, 150
        args.curve_min_steps = min(args.curve_min_steps, args.max_steps)
        args.override = ["compose.n_unknown=12", "compose.eval_size=30", "compose.retention_size=20",
                         "eval.limit=60", *args.override]
    args.seeds = args.seeds or 3
    if args.fixed_rates:
        rates = (yaml.safe_load(Path(args.config).read_text()) or {}).get("rates") or {}
        missing = [m for m in args.methods if m not in rates]
        if len(missing) == len(args.methods):
            p.error(f"--fixed-rates: {args.config} gives no `rates` for {', '.join(args.methods)}")
        args.methods = [m for m in args.methods if m in rates]
        if missing:
            print(f"--fixed-rates: {', '.join(missing)} left out ({args.config} gives them no rate)", flush=True)
    from knowpack.cli import configure_console

    configure_console(0, False)  # stages and results; no library warnings or loading bars
    t0 = time.perf_counter()
    say = lambda s: print(s, flush=True)  # noqa: E731
    results = run_all(args, say)
    from knowpack.sweep import read_results

    rows = findings(results, read_results(Path(args.out) / "compare" / "results.jsonl"), args.target)
    text = table_text(rows)
    if results["curve"]:
        text += "\n\n" + curve_table(results["curve"], args.target)
    wall = time.perf_counter() - t0
    summary = {"rows": rows, "seeds": args.seeds, "target": args.target, "wall_seconds": round(wall, 1),
               "reduced": args.reduced, "fixed_rates": args.fixed_rates or args.reduced, "methods": args.methods,
               "sizes": args.sizes}
    write_json(Path(args.out) / "fidelity.json", summary)
    write_text(Path(args.out) / "fidelity.md", text + "\n")
    print()
    print(f"Findings on the world ({args.seeds} seed(s), every compared point at zero-shot reliability >= "
          f"{args.target:.0%}; {math.ceil(wall)} s):")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
