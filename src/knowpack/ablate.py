"""Zeroing ablations: how much does a model lose when some of its FFN knowledge vectors are zeroed?

The LoKI paper's premise (its Table 5a): zeroing the q% of `down_proj` rows that KVA scores highest
costs far more than zeroing the q% it scores lowest; layer-balanced selection costs less than a
global one. `knowpack ablate` measures that on any model, with no training: for each selection
strategy it zeroes the selected rows, scores every benchmark and the model's known facts, restores
the weights and reports the drop against the base model, with paired intervals.

    knowpack ablate configs/loki-world.yaml --q 1 --out runs/ablate

The same machinery zeroes whole MLPs (`mlp_profile`: one layer's MLP output at a time), the
causal-tracing style profile of where knowledge sits (`knowpack world check` reports it).

"General-capability loss" follows the LoKI paper: the mean over benchmarks of the relative drop
(base - ablated) / base, in percent.
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import Any, Callable, Iterator, Sequence

import torch

from knowpack.evaluate.metrics import benchmark_drop
from knowpack.methods.loki import arch

log = logging.getLogger(__name__)

Evaluate = Callable[[Any], dict[str, dict[str, Any]]]  # model -> {name: {"accuracy", "correct": [0/1, ...]}}


@contextlib.contextmanager
def zeroed_rows(model: Any, layers: Sequence[Sequence[int]]) -> Iterator[None]:
    """Zero rows `layers[l]` of every layer's `down_proj.weight` for the block; restored afterwards."""
    downs = arch.down_projs(model)
    if len(layers) != len(downs):
        raise ValueError(f"{len(layers)} index lists for {len(downs)} layers")
    saved = []
    with torch.no_grad():
        for down, rows in zip(downs, layers):
            idx = torch.as_tensor(list(rows), dtype=torch.long, device=down.weight.device)
            saved.append((down, idx, down.weight[idx].clone()))
            down.weight[idx] = 0
    try:
        yield
    finally:
        with torch.no_grad():
            for down, idx, rows in saved:
                down.weight[idx] = rows


@contextlib.contextmanager
def zeroed_mlp(model: Any, layer: int) -> Iterator[None]:
    """The MLP of decoder layer `layer` outputs zeros for the block (its down_proj weight zeroed)."""
    hidden = arch.down_projs(model)[layer].weight.shape[0]
    layers: list[list[int]] = [[] for _ in arch.down_projs(model)]
    layers[layer] = list(range(hidden))
    with zeroed_rows(model, layers):
        yield


def drops(base: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per benchmark the drop against the base (paired over its questions), and the mean relative drop."""
    out: dict[str, Any] = {}
    for name, b in base.items():
        a = after[name]
        out[name] = benchmark_drop(b["accuracy"], a["accuracy"], items_before=b.get("correct"),
                                   items_after=a.get("correct"))
    rel = [d["relative"] for d in out.values() if d.get("relative") is not None]
    return {"benchmarks": out, "capability_loss_pct": 100 * sum(rel) / len(rel) if rel else None}


def strategy_ablation(model: Any, scores: torch.Tensor, q: float, strategies: Sequence[str], evaluate: Evaluate,
                      *, seed: int = 0, base: dict[str, dict[str, Any]] | None = None,
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """For each strategy: zero its rows (KVA `scores` [N, L, D], q percent), evaluate, restore."""
    from knowpack.methods.loki.select import select_nodes

    base = base if base is not None else evaluate(model)
    rows: dict[str, Any] = {}
    for strategy in strategies:
        layers = select_nodes(scores, q, strategy, seed=seed)
        if progress:
            progress(strategy)
        with zeroed_rows(model, layers):
            after = evaluate(model)
        rows[strategy] = {"zeroed_rows": sum(map(len, layers)), "rows_per_layer": [len(x) for x in layers],
                          "scores": {k: v["accuracy"] for k, v in after.items()},
                          "correct": {k: v.get("correct") for k, v in after.items()}, **drops(base, after)}
    return {"q": q, "base": {k: v["accuracy"] for k, v in base.items()}, "strategies": rows,
            "definition": "each strategy's rows of every down_proj.weight set to zero (no training), the model "
                          "scored again; drop = base - ablated per benchmark (paired over its questions), "
                          "capability_loss_pct = mean relative drop over the benchmarks x 100 (the LoKI paper's "
                          "'general capability' loss)"}


def mlp_profile(model: Any, evaluate: Evaluate, *, base: dict[str, dict[str, Any]] | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """For each layer: its whole MLP zeroed, the model scored; where the model's knowledge sits."""
    base = base if base is not None else evaluate(model)
    layers = []
    for layer in range(len(arch.down_projs(model))):
        if progress:
            progress(f"layer {layer}")
        with zeroed_mlp(model, layer):
            after = evaluate(model)
        layers.append({"layer": layer, "scores": {k: v["accuracy"] for k, v in after.items()}, **drops(base, after)})
    return {"base": {k: v["accuracy"] for k, v in base.items()}, "layers": layers,
            "definition": "one decoder layer's MLP output zeroed at a time (its down_proj weight set to 0), the "
                          "model scored again; drop per benchmark against the base model"}


def known_fact_sample(facts: Any, rows: Sequence[dict[str, Any]], size: int, seed: int = 0) -> list[str]:
    """A seeded sample of the facts the base probe found HighlyKnown: the 'known facts' an ablation scores."""
    known = [r["id"] for r in rows if r["category"] == "HighlyKnown" and r["id"] in facts]
    return sorted(random.Random(seed).sample(known, min(size, len(known))))


class Scorer:
    """An `Evaluate`: a model's benchmarks (refusal questions left out) and the zero-shot answers to a
    sample of its known facts, as one more benchmark ('known_facts'), with per-question outcomes."""

    def __init__(self, cfg: Any, tok: Any, bench: Any, facts: Any, known_ids: Sequence[str]):
        self.cfg, self.tok, self.bench, self.facts, self.known_ids = cfg, tok, bench, facts, list(known_ids)
        self.bench.refusal = []

    def __call__(self, model: Any) -> dict[str, dict[str, Any]]:
        from knowpack.evaluate.stage import score_benchmarks
        from knowpack.probe.match import is_correct
        from knowpack.probe.slick import answer_zero_shot

        cfg = self.cfg
        scores = {k: v for k, v in score_benchmarks(model, self.tok, self.bench, cfg.eval,
                                                   refusal_patterns=cfg.probe.refusal_patterns).items()
                  if not k.startswith("_")}
        if self.known_ids:
            answers = answer_zero_shot(model, self.tok, [self.facts[i].question for i in self.known_ids],
                                       batch_size=cfg.eval.batch_size)
            ok = [int(is_correct(a, self.facts[i].answers, cfg.probe.match, cfg.probe.refusal_patterns))
                  for a, i in zip(answers, self.known_ids)]
            scores["known_facts"] = {"accuracy": sum(ok) / len(ok), "correct": ok, "n": len(ok)}
        return scores


def paired_outcomes(result: dict[str, Any], a: str, b: str) -> tuple[list[int], list[int]]:
    """Per-question outcomes (0/1) after zeroing strategy `a`'s rows and after `b`'s, over the questions of
    every benchmark both scored in full (benchmarks and known facts pooled, in name order)."""
    ca, cb = result["strategies"][a]["correct"], result["strategies"][b]["correct"]
    xs: list[int] = []
    ys: list[int] = []
    for name in sorted(ca):
        if ca[name] and cb.get(name) and len(ca[name]) == len(cb[name]):
            xs += ca[name]
            ys += cb[name]
    return xs, ys


def format_table(result: dict[str, Any]) -> str:
    """A markdown table: strategy, rows zeroed, per-benchmark relative drop, capability loss."""
    names = sorted(result["base"])
    head = ["strategy", "rows zeroed"] + [f"{n} (base {result['base'][n]:.3f})" for n in names] + \
           ["capability loss"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for strategy, r in result["strategies"].items():
        cells = [strategy, str(r["zeroed_rows"])]
        for n in names:
            d = r["benchmarks"][n]
            ci = d.get("absolute_ci95")
            rel = d.get("relative")
            cells.append("n/a" if rel is None else f"{rel:+.1%}" + (f" (abs {d['absolute']:+.3f} [{ci[0]:+.3f}, "
                                                                     f"{ci[1]:+.3f}])" if ci else ""))
        loss = r["capability_loss_pct"]
        cells.append("n/a" if loss is None else f"{loss:.2f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_ablation(cfg: Any, out_dir: Any, *, q: float = 1.0, strategies: Sequence[str] | None = None,
                 known: int = 300, progress: bool = True, say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """`knowpack ablate`: the strategies' zeroing ablation on the config's model, benchmarks and known facts.

    Known facts are a seeded sample of the facts the base probe finds HighlyKnown, answered zero-shot;
    they count as one more benchmark ('known_facts'). Writes ablation.json and ablation.md in `out_dir`.
    """
    from pathlib import Path

    from knowpack.errors import KnowpackError
    from knowpack.evaluate.stage import resolve_benchmarks
    from knowpack.io import write_json, write_text
    from knowpack.methods.loki.select import STRATEGIES
    from knowpack.models import load_model
    from knowpack.runs import (attribution_scores, cached_probe, load_run_facts, model_path, probe_facts_of,
                               world_dir)

    strategies = list(strategies or STRATEGIES)
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise KnowpackError(f"unknown strategy {', '.join(bad)}; choose from: {', '.join(STRATEGIES)}")
    cfg = cfg.resolved()
    out = Path(out_dir)
    facts = load_run_facts(cfg)
    model, tok = load_model(model_path(cfg), device=cfg.device, dtype=cfg.dtype,
                            trust_remote_code=cfg.trust_remote_code)
    say("probing the base model (cached)")
    rows, _ = cached_probe(cfg, model, tok, probe_facts_of(cfg, facts), exemplars=facts, progress=progress)
    known_ids = known_fact_sample(facts, rows, known, seed=cfg.seed)
    bench = resolve_benchmarks(cfg.eval, cfg.model, world_dir() if cfg.model == "world" else None)
    if not bench.mc and not bench.qa and not bench.harness and not known_ids:
        raise KnowpackError("nothing to score: no benchmark (eval.mc, eval.qa, eval.harness) and no HighlyKnown fact")
    evaluate = Scorer(cfg, tok, bench, facts, known_ids)

    say("attribution scores (KVA, cached)")
    scores = attribution_scores(cfg, model, tok, progress=progress)
    say(f"zeroing {q:g}% of the rows per strategy: {', '.join(strategies)}")
    result = strategy_ablation(model, scores, q, strategies, evaluate, seed=cfg.train.loki.seed,
                               progress=lambda s: say(f"  {s}"))
    loss = {s: r["capability_loss_pct"] for s, r in result["strategies"].items()}
    lines = []
    if "layer_balanced_highest" in loss and "layer_balanced_lowest" in loss:
        hi, lo = loss["layer_balanced_highest"], loss["layer_balanced_lowest"]
        ratio = f"{hi / lo:.1f}x" if lo and lo > 0 else "undefined (the lowest rows cost nothing)"
        lines.append(f"highest-attributed rows cost {hi:.2f}%, lowest {lo:.2f}% (ratio {ratio}; LoKI paper, "
                     "Llama-3.1-8B-Instruct, q=1: 36.73% vs 11.35%)")
    if "global_lowest" in loss and "layer_balanced_lowest" in loss:
        lines.append(f"global lowest {loss['global_lowest']:.2f}% vs layer-balanced lowest "
                     f"{loss['layer_balanced_lowest']:.2f}%")
    result.update({"known_facts": len(known_ids), "attribution_prompts": int(scores.shape[0]),
                   "model": model_path(cfg), "summary": "; ".join(lines)})
    table = format_table(result)
    write_json(out / "ablation.json", result)
    write_text(out / "ablation.md", f"# Zeroing ablation, q = {q:g}%\n\n{result['definition']}.\n\n{table}\n\n"
                                    f"{result['summary']}\n")
    return {**result, "table": table}
