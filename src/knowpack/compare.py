"""Matched-reliability comparison: every method trained to one reliability target, at a learning rate the
tool chose for it, beside the controls that tell what the method's choice of parameters is worth.

    knowpack compare configs/compare-world.yaml --out runs/compare

A compare config is a sweep config (a run config plus `points:` and/or `grid:`) with a `compare:`
section (`CompareSettings`). For every point and seed the run trains until its zero-shot reliability
on the trained facts reaches `target` (checked every `check_every` epochs, default 1) or `max_steps`
is spent; the table reports the steps each needed, whether it reached the target, and the damage at
that point:
negative shift with its noise floor, locality, each benchmark's drop, refusals, answer collapse.
A point that missed the target is marked and left out of every comparison, never silently compared.

**Learning rate, chosen per method.** Before the comparison, every distinct method (method and its
adapter shape; LoKI's row strategy excluded, so LoKI's controls share its rate) trains once per
candidate rate (`lrs`, log-spaced), on the first point's data and seed, to the same target and cap.
Each candidate is judged on the *validation split*: the composition's retention facts
(HighlyKnown facts outside both the trained facts and the evaluation sample, so the reported figures
are not used to choose). Rule: among candidates that reach the target, the one that loses the fewest
validation facts (zero-shot accuracy, base minus at the stop) wins, ties broken by fewer steps, then by
the lower rate; if none reaches it, the one with the highest reliability at the cap (its points will be
marked as missing). All candidates and the choice are written to `lr_search.json`.

**Controls** (`controls: true`), beside every LoKI point: LoRA with the rank whose trainable count is
closest to LoKI's (parameter-matched), LoKI on random rows, LoKI on the highest-attributed rows.
With the search, the parameter-matched LoRA is a method of its own and gets its own rate; without
it (`lr_search: false`), it trains at the rate of the comparison's first LoRA point that sets one
(else LoRA's default), and LoKI's controls at their LoKI point's rate.

Runs are cached and resumable: each is a run directory under `OUT/runs/` and one line of
`OUT/results.jsonl` (a sweep underneath); the learning-rate trials are under `OUT/lr_search/`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from knowpack.config import load_config
from knowpack.errors import ConfigError, KnowpackError
from knowpack.evaluate import stats
from knowpack.io import append_jsonl, write_json, write_text

log = logging.getLogger(__name__)

LR_FILE = "lr_search.jsonl"


@dataclass
class CompareSettings:
    target: float = field(default=0.95, metadata={"min": 0, "max": 1,
                                                  "help": "zero-shot reliability every point is trained to"})
    max_steps: int = field(default=2000, metadata={"min": 1, "help": "step cap; a point that misses the target "
                                                                    "is marked and never compared"})
    lrs: dict[str, list[float]] = field(default_factory=dict, metadata={
        "help": "candidate learning rates per method name (log-spaced); a method without an entry uses "
                "[default/3, default, 3 x default, 10 x default] around its default rate"})
    lr_search: bool = field(default=True, metadata={"help": "choose each method's rate (false: the configs' own)"})
    controls: bool = field(default=True, metadata={
        "help": "beside each LoKI point: parameter-matched LoRA, LoKI on random rows, LoKI on the highest rows"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "run seeds of every point"})
    check_every: int | None = field(default=1, metadata={"min": 1, "help": (
        "epochs between reliability checks; more saves time when an epoch is a step or two (few facts), at the "
        "cost of stopping up to that many epochs after the target was first reached; null: each point's own "
        "train.early_stopping.every")})


@dataclass
class Point:
    id: str
    label: str
    config: Any  # RunConfig
    family: str  # which learning-rate search it shares
    control_of: str | None = None


# --- loading ---------------------------------------------------------------------------------


def load_compare(path: str | Path, overrides: Iterable[str] = ()) -> tuple[Any, list[Any], CompareSettings]:
    """(base config, sweep points, compare settings); every problem reported at once."""
    from knowpack.config import _Ctx, _read_yaml
    from knowpack.sweep import load_sweep

    ctx = _Ctx()
    raw = _read_yaml(Path(path), ctx)
    if ctx.problems:
        raise ConfigError(ctx.problems, source=str(path))
    if not isinstance(raw, dict):
        raise ConfigError(["the top level must be a mapping"], source=str(path))
    section = raw.pop("compare", None) or {}
    try:
        settings = load_config(CompareSettings, data=section)
    except ConfigError as exc:
        raise ConfigError([f"compare.{p}" for p in exc.problems], source=str(path)) from None
    base, points = load_sweep(path, overrides, data=raw)
    return base, points, settings


def family(cfg: Any) -> str:
    """What a learning-rate search is shared by: the method and its adapter shape (not LoKI's strategy)."""
    t = cfg.train
    if t.method in ("loki", "loki_lora"):
        from knowpack.methods import get_method

        shape = f"q={get_method(t.method).q(t.loki):g}" + (f",r={t.loki.r}" if t.method == "loki_lora" else "")
    elif t.method in ("lora", "dora", "pissa"):
        shape = f"r={t.lora.r},alpha={t.lora.alpha:g}"
    else:
        shape = ""
    return f"{t.method}({shape})" if shape else t.method


def _label(cfg: Any) -> str:
    t, c = cfg.train, cfg.compose
    if t.method in ("loki", "loki_lora"):
        from knowpack.methods import get_method

        name = f"{t.method} q={get_method(t.method).q(t.loki):g}"
        if t.loki.strategy != "layer_balanced_lowest":
            name += f" {t.loki.strategy.replace('layer_balanced_', '')} rows"
    else:
        name = f"{t.method} r={t.lora.r}" if t.method in ("lora", "dora", "pissa") else t.method
    if c.mixing != "none" and c.k:
        name += f", +{c.k} {c.mixing}"
    return name


def matched_rank(cfg: Any, target_params: int) -> int:
    """The LoRA rank whose trainable count (same targets) is closest to `target_params`."""
    from knowpack.methods import count_trainable, get_method
    from knowpack.models import load_model
    from knowpack.runs import model_path

    model, _ = load_model(model_path(cfg), device="cpu", dtype="float32")
    lora = replace(cfg.train.lora, r=1, alpha=cfg.train.lora.alpha / max(1, cfg.train.lora.r))
    one = count_trainable(get_method("lora").prepare(model, lora))  # LoRA's count is linear in r
    return max(1, round(target_params / one))


def loki_params(cfg: Any) -> int:
    """LoKI's trainable count without training: Σ|S_l| x d_ff = L x k x d_ff (layer-balanced)."""
    from knowpack.methods import get_method
    from knowpack.methods.loki.select import rows_per_layer
    from knowpack.models import load_model
    from knowpack.runs import model_path

    model, _ = load_model(model_path(cfg), device="cpu", dtype="float32")
    c = model.config
    k = rows_per_layer(get_method(cfg.train.method).q(cfg.train.loki), c.hidden_size)
    return c.num_hidden_layers * k * c.intermediate_size


def expand_points(points: list[Any], settings: CompareSettings) -> list[Point]:
    """The comparison's points: the config's own, then the controls of each LoKI point."""
    from knowpack.sweep import point_id

    out: list[Point] = []
    for p in points:
        out.append(Point(p.id, _label(p.config), p.config, family(p.config)))
    if settings.controls:
        lora_lr = next((p.config.train.lr for p in out if p.config.train.method == "lora"
                        and p.config.train.lr is not None), None)
        for p in list(out):
            cfg = p.config
            if cfg.train.method != "loki" or cfg.train.loki.strategy != "layer_balanced_lowest":
                continue
            rank = matched_rank(cfg, loki_params(cfg))
            lora = replace(cfg, train=replace(cfg.train, method="lora", lr=lora_lr,
                                              lora=replace(cfg.train.lora, r=rank, alpha=2.0 * rank)))
            controls = [(lora, "parameter-matched LoRA")]
            for strategy in ("random", "layer_balanced_highest"):
                controls.append((replace(cfg, train=replace(cfg.train, loki=replace(cfg.train.loki, strategy=strategy))),
                                 f"LoKI {strategy.replace('layer_balanced_', '')} rows"))
            for c, what in controls:
                pid = point_id({"control_of": p.id, "control": what})
                out.append(Point(pid, f"{_label(c)} ({what})", c, family(c), control_of=p.id))
    ids = [p.id for p in out]
    if len(set(ids)) != len(ids):
        raise KnowpackError("the comparison has two points with the same settings; remove the duplicate")
    return out


# --- training to the target ------------------------------------------------------------------


def to_target(cfg: Any, settings: CompareSettings, *, lr: float | None = None, seed: int | None = None) -> Any:
    """The config trained to the reliability target with the step cap (early stopping every epoch)."""
    train = replace(cfg.train, epochs=max(cfg.train.epochs, 10 ** 6), max_steps=settings.max_steps,
                    lr=cfg.train.lr if lr is None else lr,
                    early_stopping=replace(cfg.train.early_stopping, enabled=True, reliability=settings.target,
                                           max_retention_drop=1.0,
                                           every=settings.check_every or cfg.train.early_stopping.every))
    return replace(cfg, train=train, seed=cfg.seed if seed is None else seed)


def config_lr(cfg: Any) -> float:
    """The rate a config trains at: its own `train.lr`, else its method's default."""
    from knowpack.methods import get_method

    return float(cfg.train.lr) if cfg.train.lr is not None else float(get_method(cfg.train.method).default_lr)


def candidate_rates(cfg: Any, settings: CompareSettings) -> list[float]:
    if cfg.train.method in settings.lrs:
        return sorted(float(x) for x in settings.lrs[cfg.train.method])
    default = config_lr(cfg)
    return [default / 3, default, default * 3, default * 10]


def _judge(trial: dict[str, Any], target: float) -> tuple:
    """Sort key of a candidate rate: reached first, then least validation loss, fewer steps, lower rate."""
    reached = trial["reliability"] >= target
    return (not reached, trial["validation_loss"] if reached else -trial["reliability"], trial["steps"], trial["lr"])


def search_lr(cfg: Any, settings: CompareSettings, out: Path, *,
              train: Callable[[Any, Path], dict[str, Any]] | None = None,
              say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Try every candidate rate of `cfg`'s method (see the module docstring); returns the trials and the choice."""
    from knowpack.sweep import read_results

    train = train or _train_trial
    fam = family(cfg)
    log_path = out / LR_FILE
    done = {(r["family"], r["lr"]): r for r in read_results(log_path, repair=True)}
    trials = []
    for lr in candidate_rates(cfg, settings):
        if (fam, lr) not in done:
            say(f"  learning rate {lr:g} for {fam}")
            trial = {"family": fam, "lr": lr, **train(to_target(cfg, settings, lr=lr),
                                                      out / "lr_search" / _safe(fam) / f"lr={lr:g}")}
            append_jsonl(log_path, trial)
            done[(fam, lr)] = trial
        trials.append(done[(fam, lr)])
    best = min(trials, key=lambda t: _judge(t, settings.target))
    return {"family": fam, "trials": trials, "chosen": best["lr"], "reached": best["reliability"] >= settings.target,
            "rule": "among rates reaching the target within the step cap: fewest validation facts lost, then fewer "
                    "steps, then the lower rate; if none reaches it: the highest reliability at the cap"}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "=,.-" else "_" for c in name)


def _train_trial(cfg: Any, out: Path) -> dict[str, Any]:
    """One learning-rate trial: train to the target; reliability, steps and the validation loss at the stop."""
    from knowpack.io import read_jsonl
    from knowpack.runs import train_run

    run = train_run(cfg, out, progress=False)
    evals = [r["eval"] for r in read_jsonl(out / "train_log.jsonl", drop_torn_tail=True) if "eval" in r]
    start = evals[-1].get("retention_start") if evals else None
    final = evals[-1].get("retention") if evals else None
    return {"reliability": run.summary["reliability_zero_shot"], "steps": run.summary["steps"],
            "validation_loss": (start - final) if start is not None and final is not None else 0.0,
            "validation_facts": len(run.composition.retention_ids), "trainable_params": run.summary["trainable_params"]}


# --- the comparison --------------------------------------------------------------------------


def run_compare(config_path: str | Path, out_dir: str | Path, *, overrides: Iterable[str] = (),
                say: Callable[[str], None] = lambda s: None,
                run_point: Callable[[Any, Path], dict[str, Any]] | None = None,
                train_trial: Callable[[Any, Path], dict[str, Any]] | None = None,
                executor: Any = None) -> dict[str, Any]:
    """Search each method's rate, train every point and seed to the target, tabulate; writes compare.json/.md."""
    from knowpack.config import save_config
    from knowpack.runs import full_run_record
    from knowpack.sweep import GridPoint, run_points

    base, sweep_points, settings = load_compare(config_path, overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(base, out / "compare_base.yaml")
    points = expand_points(sweep_points, settings)
    write_json(out / "compare_points.json", [{"id": p.id, "label": p.label, "family": p.family,
                                              "control_of": p.control_of} for p in points])
    lr_choice: dict[str, dict[str, Any]] = {}
    if settings.lr_search:
        for p in points:
            if p.family not in lr_choice:
                lr_choice[p.family] = search_lr(replace(p.config, seed=settings.seeds[0]), settings, out,
                                                train=train_trial, say=say)
                say(f"  {p.family}: learning rate {lr_choice[p.family]['chosen']:g}")
        write_json(out / "lr_search.json", lr_choice)
    grid = []
    for p in points:
        lr = lr_choice[p.family]["chosen"] if p.family in lr_choice else config_lr(p.config)
        for seed in settings.seeds:
            grid.append(GridPoint(f"{p.id}-seed={seed}", {"compare_point": p.id, "seed": seed, "lr": lr},
                                  to_target(p.config, settings, lr=lr, seed=seed)))

    def on_point(i: int, n: int, gp: GridPoint, state: str) -> None:
        if state == "running":
            label = next(p.label for p in points if p.id == gp.overrides["compare_point"])
            lr = gp.overrides["lr"]
            say(f"  [{i}/{n}] {label}, seed {gp.overrides['seed']}" + (f", lr {lr:g}" if lr is not None else ""))

    records = run_points(grid, out, run_point=run_point or full_run_record, on_point=on_point, executor=executor)
    table = tabulate(points, records, settings, lr_choice)
    write_json(out / "compare.json", table)
    write_text(out / "compare.md", table_markdown(table) + "\n")
    return table


# --- tables ----------------------------------------------------------------------------------

#: (headline key, column title, percent) of the damage columns
COLUMNS = (("reliability_zero_shot", "zero-shot reliability", True), ("negative_shift", "negative shift", True),
           ("negative_shift_floor", "noise floor", True), ("positive_shift", "positive shift", True),
           ("locality", "locality", True), ("refusal_facts_after", "refusals after", True),
           ("distinct_answers_after", "distinct answers", False),
           ("mean_benchmark_drop_relative", "mean benchmark drop", True))


def _cell(values: list[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    return stats.seeds_interval(got)


def tabulate(points: list[Point], records: list[dict[str, Any]], settings: CompareSettings,
             lr_choice: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row per point: steps, whether every seed reached the target, damage as mean and 95% interval over seeds."""
    rows = []
    for p in points:
        recs = [r for r in records if (r.get("overrides") or {}).get("compare_point") == p.id]
        heads = [r["metrics"]["headline"] for r in recs]
        runs = [r["metrics"]["run"] for r in recs]
        reached = [(h.get("reliability_zero_shot") or 0) >= settings.target for h in heads]
        bench = sorted({k for h in heads for k in (h.get("benchmark_drop_relative") or {})})
        row = {
            "id": p.id, "label": p.label, "family": p.family, "control_of": p.control_of,
            "lr": lr_choice[p.family]["chosen"] if p.family in lr_choice else config_lr(p.config),
            "seeds": [r["overrides"]["seed"] for r in recs], "reached_target": all(reached) and bool(reached),
            "seeds_reaching_target": sum(reached),
            "steps": _cell([r["steps"] for r in runs]),
            "trainable_params": runs[0]["trainable_params"] if runs else None,
            **{key: _cell([h.get(key) for h in heads]) for key, _, _ in COLUMNS},
            "benchmark_drop_relative": {b: _cell([(h.get("benchmark_drop_relative") or {}).get(b) for h in heads])
                                        for b in bench},
        }
        rows.append(row)
    return {"target": settings.target, "max_steps": settings.max_steps, "settings": asdict(settings), "rows": rows,
            "lr_search": lr_choice,
            "definition": f"every point trained until its zero-shot reliability on the trained facts reached "
                          f"{settings.target} or {settings.max_steps} steps were spent; cells are means over seeds with "
                          "a Student t 95% interval; a row that missed the target on any seed is marked and left out "
                          "of comparisons"}


def _fmt(cell: dict[str, Any], pct: bool) -> str:
    m = cell.get("mean")
    if m is None:
        return "n/a"
    ci = cell.get("ci95")
    if pct:
        return f"{m:.1%}" + (f" ±{(ci[1] - ci[0]) / 2:.1%}" if ci else "")
    return f"{m:,.0f}" + (f" ±{(ci[1] - ci[0]) / 2:,.0f}" if ci else "")


def table_markdown(table: dict[str, Any]) -> str:
    target = table["target"]
    rows = table["rows"]
    bench = sorted({b for r in rows for b in r["benchmark_drop_relative"]})
    head = ["point", "lr", "params", "steps", *[c for _, c, _ in COLUMNS], *[f"{b} drop" for b in bench]]
    lines = [f"Matched comparison at zero-shot reliability ≥ {target:.0%} (step cap {table['max_steps']}); "
             "mean ±95% half-interval over seeds.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        mark = "" if r["reached_target"] else \
            f" ✗ missed the target ({r['seeds_reaching_target']}/{len(r['seeds'])} seeds): not compared"
        cells = [r["label"] + mark, "n/a" if r["lr"] is None else f"{r['lr']:g}",
                 "n/a" if r["trainable_params"] is None else f"{r['trainable_params']:,}", _fmt(r["steps"], False)]
        cells += [_fmt(r[key], pct) for key, _, pct in COLUMNS]
        cells += [_fmt(r["benchmark_drop_relative"].get(b, {}), True) for b in bench]
        lines.append("| " + " | ".join(cells) + " |")
    missed = [r["label"] for r in rows if not r["reached_target"]]
    if missed:
        lines += ["", f"Not compared (missed the target): {', '.join(missed)}."]
    return "\n".join(lines)


def comparable(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows that may be compared: those that reached the target on every seed."""
    return [r for r in table["rows"] if r["reached_target"]]


def describe_lr_search(lr_choice: dict[str, dict[str, Any]]) -> str:
    lines = []
    for fam, res in lr_choice.items():
        trials = ", ".join(f"{t['lr']:g}: reliability {t['reliability']:.0%} in {t['steps']} steps, "
                           f"validation loss {t['validation_loss']:+.1%}" for t in res["trials"])
        lines.append(f"- {fam}: chose {res['chosen']:g} ({trials})")
    return "\n".join(lines)
