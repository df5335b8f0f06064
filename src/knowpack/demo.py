"""`knowpack demo` / `make demo`: the whole story on the embedded default world, in a few minutes on a CPU.

1. What the world holds and how its base model does zero-shot on head, torso and tail facts and on
   the world's benchmarks (measured now, not read from a file).
2. The sweep in `configs/demo.yaml`: probe the base model, inject 50 Unknown facts with LoRA alone,
   with +10 HighlyKnown facts, with +10 paraphrases, and with LoKI; evaluate each; write the report.
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
    printer(f"  {len(facts)} probe facts over {len(facts.relations())} relations ({', '.join(facts.relations())}); "
            f"{sizes.get('mc_benchmark', '?')} MC questions, {sizes.get('arithmetic_benchmark', '?')} arithmetic "
            f"questions, {sizes.get('refusal_facts', '?')} refusal questions")
    printer(f"  base model: Llama, {n_params / 1e6:.2f} M parameters, {model.config.num_hidden_layers} layers, "
            f"hidden {model.config.hidden_size}, FFN {model.config.intermediate_size}")
    t0 = time.perf_counter()
    answers = answer_zero_shot(model, tok, [f.question for f in facts], batch_size=64)
    by_bucket: dict[str, list[bool]] = defaultdict(list)
    for f, a in zip(facts, answers):
        by_bucket[str(f.meta.get("bucket", "all"))].append(matches(a, f.answers))
    line = ", ".join(f"{b} {sum(v) / len(v):.1%} of {len(v)}" for b, v in sorted(by_bucket.items()))
    printer(f"  zero-shot accuracy by popularity: {line}")
    bench = resolve_benchmarks(EvalSettings(), "world", wd)
    scores = score_benchmarks(model, tok, bench, EvalSettings(batch_size=64))
    for name, s in scores.items():
        if name.startswith("_"):
            printer(f"  refusal facts: answered \"I don't know\" for {s['rate']:.1%} of {s['n']}")
        else:
            chance = f" ({s.get('scoring')} scoring, chance 25%)" if s.get("kind") == "mc" else ""
            printer(f"  benchmark {name}: {s['accuracy']:.1%} of {s['n']}{chance}")
            letter = info.get("zero_shot", {}).get("mc_letter")
            if name == "world_mc" and letter is not None:
                printer(f"    (by answer letter, lm-eval's mmlu scoring: {letter:.1%} at build time; the tiny model "
                        "never learnt the letter format)")
    printer(f"  (measured in {time.perf_counter() - t0:.1f} s)")
    return {"by_bucket": {b: sum(v) / len(v) for b, v in by_bucket.items()}, "benchmarks": scores}


def _label(overrides: dict[str, Any], method: str, k: Any) -> str:
    """A short name for a sweep point ('lora, plain', 'lora, +10 highly_known', 'loki q=30'): what the
    point is, not the settings (epochs, lr) that only size it. `method` and `k` are the point's own."""
    parts = [method + (f" q={overrides['train.loki.q']}" if "train.loki.q" in overrides else "")]
    mixing = overrides.get("compose.mixing")
    if mixing and mixing != "none":
        parts.append(f"+{k} {mixing}")
    elif "train.method" not in overrides:
        parts.append("plain")
    if "compose.n_unknown" in overrides:
        parts.append(f"n={overrides['compose.n_unknown']}")
    return ", ".join(parts)


def run_demo(config: Path, out: Path, printer: Printer, progress: bool = True) -> int:
    from knowpack.errors import KnowpackError
    from knowpack.report import write_sweep_report
    from knowpack.sweep import run_sweep

    if not config.exists():
        raise KnowpackError(f"demo config '{config}' not found; run from the repository root or pass its path")
    t0 = time.perf_counter()
    world_overview(printer)
    printer("")
    printer(f"Packing facts ({config}):")

    def on_point(i: int, n: int, point: Any, state: str) -> None:
        desc = _label(point.overrides, point.config.train.method, point.config.compose.k)
        printer(f"  [{i}/{n}] {desc}: {'already done' if state == 'done' else 'running'} "
                f"({time.perf_counter() - t0:.0f} s elapsed)")

    records = run_sweep(config, out, on_point=on_point)
    report = write_sweep_report(out)
    printer("")
    printer(f"{'run':<34} {'reliability':>11} {'zero-shot':>9} {'paraphr.':>8} {'+shift':>7} {'-shift':>7} "
            f"{'MC drop':>8} {'params':>8}")
    short = [_label(r["overrides"], r["metrics"]["run"]["method"], r["metrics"]["run"]["k"]) for r in records]
    # Two points that differ only in sizing settings (lr, epochs, seed) are named by all their overrides.
    labels = {id(r): s if short.count(s) == 1 else ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in
                                                              r["overrides"].items()) or "base"
              for r, s in zip(records, short)}
    for r in records:
        h = r["metrics"]["headline"]
        label = labels[id(r)]

        def f(key: str, pct: bool = True) -> str:
            v = h.get(key)
            return "n/a" if v is None else (f"{v:.1%}" if pct else f"{v}")

        drop = (r["metrics"].get("benchmarks") or {}).get("world_mc", {}).get("absolute")
        printer(f"{label:<34} {f('reliability'):>11} {f('reliability_zero_shot'):>9} "
                f"{f('generalisation_zero_shot'):>8} {f('positive_shift'):>7} {f('negative_shift'):>7} "
                f"{'n/a' if drop is None else f'{drop:+.3f}':>8} {r['metrics']['run']['trainable_params']:>8,}")
    printer("")
    printer(f"Done in {time.perf_counter() - t0:.0f} s. Report: {report}")
    printer(f"Per-run directories (metrics.json, report.md, adapter/): {out / 'runs'}")
    return 0
