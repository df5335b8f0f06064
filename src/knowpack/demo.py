"""`knowpack demo` / `make demo`: the whole story on the embedded default world, in a few minutes on a CPU.

1. What the world holds and how its base model does zero-shot on head, torso and tail facts and on
   the world's benchmarks (measured now, not read from a file).
2. The matched comparison in `configs/demo.yaml` (`knowpack compare`): Unknown facts injected with
   LoRA alone, with +10 HighlyKnown facts, with +10 paraphrases, and with LoKI, every point trained
   until its zero-shot reliability reaches one target (a point that misses it is marked and not
   compared); the damage at that point, with 95% intervals, in one table, and the sweep report.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

Printer = Callable[[str], None]


def world_overview(printer: Printer) -> dict[str, Any]:
    from knowpack.evaluate.stage import EvalSettings, resolve_benchmarks, score_benchmarks
    from knowpack.facts import load_facts
    from knowpack.models import load_model
    from knowpack.probe.match import matches
    from knowpack.probe.slick import answer_zero_shot
    from knowpack.runs import world_dir

    wd = world_dir()
    info = json.loads((wd / "world.json").read_text())
    facts = load_facts(wd / "facts.jsonl", "native")
    model, tok = load_model(wd / "model", device="cpu", dtype="float32")
    n_params = sum(p.numel() for p in model.parameters())
    sizes = info.get("sizes", {})
    printer(f"The embedded world ({wd}):")
    printer(f"  {len(facts)} probe facts about {sizes.get('people', '?')} made-up people over "
            f"{len(facts.relations())} relations, {sizes.get('templates_per_relation', '?')} question wordings each; "
            f"{sizes.get('refusal_facts', '?')} refusal questions")
    printer(f"  base model: Llama, {n_params / 1e6:.2f} M parameters, {model.config.num_hidden_layers} layers, "
            f"hidden {model.config.hidden_size}, FFN {model.config.intermediate_size}")
    t0 = time.perf_counter()
    answers = answer_zero_shot(model, tok, [f.question for f in facts], batch_size=64)
    by_bucket: dict[str, list[bool]] = defaultdict(list)
    for f, a in zip(facts, answers):
        by_bucket[str(f.meta.get("bucket", "all"))].append(matches(a, f.answers))
    line = ", ".join(f"{b} {sum(v) / len(v):.1%} of {len(v)}" for b, v in sorted(by_bucket.items(),
                                                                            key=lambda kv: ("head", "torso", "tail").index(kv[0])
                                                                            if kv[0] in ("head", "torso", "tail") else 3))
    printer(f"  zero-shot accuracy by popularity: {line}")
    bench = resolve_benchmarks(EvalSettings(), "world", wd)
    scores = score_benchmarks(model, tok, bench, EvalSettings(batch_size=64))
    for name, s in scores.items():
        if name.startswith("_"):
            printer(f"  refusal facts: answered \"I don't know\" for {s['rate']:.1%} of {s['n']}")
        else:
            chance = f" ({s.get('scoring')} scoring, chance 25%)" if s.get("kind") == "mc" else ""
            printer(f"  benchmark {name}: {s['accuracy']:.1%} of {s['n']}{chance}")
    printer(f"  (measured in {time.perf_counter() - t0:.1f} s)")
    return {"by_bucket": {b: sum(v) / len(v) for b, v in by_bucket.items()}, "benchmarks": scores}


def _pct(v: Any, ci: Any = None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.0%}" + (f" [{ci[0]:.0%},{ci[1]:.0%}]" if ci else "")


def run_demo(config: Path, out: Path, printer: Printer, progress: bool = True) -> int:
    from knowpack.compare import run_compare
    from knowpack.errors import KnowpackError
    from knowpack.report import write_sweep_report
    from knowpack.sweep import read_results

    if not config.exists():
        raise KnowpackError(f"demo config '{config}' not found; run from the repository root or pass its path")
    t0 = time.perf_counter()
    world_overview(printer)
    printer("")
    printer(f"Packing facts ({config}): every point trained to the same zero-shot reliability target")
    table = run_compare(config, out, say=lambda line: printer(line + f" ({time.perf_counter() - t0:.0f} s elapsed)"))
    records = {r["overrides"]["compare_point"]: r for r in read_results(out / "results.jsonl")}
    report = write_sweep_report(out)
    printer("")
    printer(f"at zero-shot reliability >= {table['target']:.0%} (step cap {table['max_steps']}); [95% interval]")
    width = max([len("point")] + [len(r["label"]) for r in table["rows"]])
    printer(f"{'point':<{width}} {'lr':>7} {'steps':>6} {'reliab.':>8} {'neg. shift [CI]':>16} {'floor':>6} "
            f"{'locality':>9} {'paraphr.':>8} {'bench. drop':>11} {'params':>8}")
    for row in table["rows"]:
        rec = records.get(row["id"])
        if rec is None:
            continue
        h = rec["metrics"]["headline"]
        ci = h.get("ci95") or {}
        mark = "" if row["reached_target"] else "  <- missed the target: not compared"
        printer(f"{row['label']:<{width}} {row['lr']:>7g} {rec['metrics']['run']['steps']:>6} "
                f"{_pct(h.get('reliability_zero_shot')):>8} {_pct(h['negative_shift'], ci.get('negative_shift')):>16} "
                f"{_pct(h.get('negative_shift_floor')):>6} {_pct(h['locality']):>9} "
                f"{_pct(h.get('generalisation_zero_shot')):>8} {_pct(h.get('mean_benchmark_drop_relative')):>11} "
                f"{rec['metrics']['run']['trainable_params']:>8,}{mark}")
    printer("")
    printer("neg. shift: share of untrained facts that fell a knowledge category; floor: what sampling alone moves; "
            "bench. drop: mean relative drop over the world's benchmarks")
    printer(f"Done in {time.perf_counter() - t0:.0f} s. Report: {report}; the comparison: {out / 'compare.md'}")
    printer(f"Per-run directories (metrics.json, report.md, adapter/): {out / 'runs'}")
    return 0
