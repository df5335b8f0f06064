"""Zeroing ablations: how much does a model lose when some of its FFN knowledge vectors are zeroed?

The LoKI paper's premise (its Table 5a): zeroing the q% of `down_proj` rows that KVA scores highest
costs far more than zeroing the q% it scores lowest; layer-balanced selection costs less than a
global one. `knowpack ablate` measures that on any model, with no training: for each selection
strategy it zeroes the selected rows, scores every benchmark and the model's known facts, restores
the weights and reports the drop against the base model, with paired intervals.

    knowpack ablate configs/loki-world.yaml --q 1 --out runs/ablate

The same machinery zeroes whole MLPs (`mlp_profile`: one layer's MLP output at a time), a profile of
where knowledge sits; `causal_trace` measures it the way ROME does, by restoring one layer's clean
MLP state at the subject in a run whose subject is corrupted (`knowpack world check` reports both).

"General-capability loss" follows the LoKI paper: the mean over benchmarks of the relative drop
(base - ablated) / base, in percent.
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import Any, Callable, Iterator, Sequence

import torch

from knowpack.evaluate import stats
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


def lora_modules_by_layer(model: Any) -> list[list[Any]]:
    """The PEFT LoRA modules of each decoder layer of `model` (a model carrying a plain LoRA adapter).

    Raises KnowpackError for a model without one, and for DoRA and PiSSA adapters, whose update does not
    vanish with its scaling (DoRA keeps its learnt magnitudes, PiSSA has moved the base weights)."""
    from peft.tuners.lora import LoraLayer

    from knowpack.errors import KnowpackError

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(getattr(inner, "model", inner), "layers", None)
    found = [[m for m in layer.modules() if isinstance(m, LoraLayer)] for layer in (layers or [])]
    if not any(found):
        raise KnowpackError("the model carries no LoRA adapter in its decoder layers (model.layers[i]); the per-layer "
                            "adapter profile needs a plain LoRA run's adapter")
    for name, conf in getattr(model, "peft_config", {}).items():
        init = getattr(conf, "init_lora_weights", True)
        if getattr(conf, "use_dora", False) or init not in (True, False, "gaussian"):
            raise KnowpackError(f"adapter '{name}' is not plain LoRA (use_dora={getattr(conf, 'use_dora', False)}, "
                                f"init_lora_weights={init!r}): removing its update from a layer would not give "
                                "that layer's base weights back")
    return found


@contextlib.contextmanager
def lora_only_in(model: Any, keep: Sequence[int]) -> Iterator[None]:
    """For the block, a LoRA adapter acts only in decoder layers `keep`: every other layer's LoRA modules get
    scaling 0, so their update B·A·x vanishes (base weights untouched); restored afterwards."""
    saved = []
    for layer, modules in enumerate(lora_modules_by_layer(model)):
        if layer in keep:
            continue
        for m in modules:
            saved.append((m, dict(m.scaling)))
            for name in m.scaling:
                m.scaling[name] = 0.0
    try:
        yield
    finally:
        for m, scaling in saved:
            m.scaling.update(scaling)


def lora_layer_profile(model: Any, evaluate: Evaluate, *,
                       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Where a trained LoRA adapter does its work: the model scored with the whole adapter, with the adapter
    kept in one decoder layer only, and with it removed from one layer only. Scored on whatever `evaluate`
    scores (the trained facts, held-out known facts, benchmarks), so it shows which layers' updates learn
    the new facts and which do the damage."""
    every = list(range(len(lora_modules_by_layer(model))))
    full = evaluate(model)
    with lora_only_in(model, []):
        none = evaluate(model)
    layers = []
    for layer in every:
        if progress:
            progress(f"layer {layer}")
        with lora_only_in(model, [layer]):
            only = evaluate(model)
        with lora_only_in(model, [x for x in every if x != layer]):
            without = evaluate(model)
        layers.append({"layer": layer, "only": {k: v["accuracy"] for k, v in only.items()},
                       "without": {k: v["accuracy"] for k, v in without.items()}})
    return {"adapter": {k: v["accuracy"] for k, v in full.items()},
            "no_adapter": {k: v["accuracy"] for k, v in none.items()}, "layers": layers,
            "definition": "accuracy with the LoRA update kept in one decoder layer only ('only') and with it "
                          "removed from one layer only ('without'; the removed layers' LoRA scaling set to 0, "
                          "their base weights untouched), against the whole adapter and none"}


def known_fact_sample(facts: Any, rows: Sequence[dict[str, Any]], size: int, seed: int = 0) -> list[str]:
    """A seeded sample of the facts the base probe found HighlyKnown: the 'known facts' an ablation scores."""
    known = [r["id"] for r in rows if r["category"] == "HighlyKnown" and r["id"] in facts]
    return sorted(random.Random(seed).sample(known, min(size, len(known))))


class Scorer:
    """An `Evaluate`: a model's benchmarks (refusal questions left out) and the zero-shot answers to a
    sample of its known facts, as one more benchmark ('known_facts'), with per-question outcomes."""

    def __init__(self, cfg: Any, tok: Any, bench: Any, facts: Any, known_ids: Sequence[str],
                 fact_sets: dict[str, Sequence[str]] | None = None):
        self.cfg, self.tok, self.bench, self.facts = cfg, tok, bench, facts
        # more named sets of facts scored the same way (e.g. a run's trained facts: its reliability)
        self.fact_sets = {"known_facts": list(known_ids), **{k: list(v) for k, v in (fact_sets or {}).items()}}
        self.known_ids = self.fact_sets["known_facts"]
        self.bench.refusal = []

    def __call__(self, model: Any) -> dict[str, dict[str, Any]]:
        from knowpack.evaluate.stage import score_benchmarks
        from knowpack.probe.match import is_correct
        from knowpack.probe.slick import answer_zero_shot

        cfg = self.cfg
        scores = {k: v for k, v in score_benchmarks(model, self.tok, self.bench, cfg.eval,
                                                   refusal_patterns=cfg.probe.refusal_patterns).items()
                  if not k.startswith("_")}
        for name, ids in self.fact_sets.items():
            if not ids:
                continue
            answers = answer_zero_shot(model, self.tok, [self.facts[i].question for i in ids],
                                       batch_size=cfg.eval.batch_size)
            ok = [int(is_correct(a, self.facts[i].answers, cfg.probe.match, cfg.probe.refusal_patterns))
                  for a, i in zip(answers, ids)]
            scores[name] = {"accuracy": sum(ok) / len(ok), "correct": ok, "n": len(ok)}
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


# --- causal tracing ------------------------------------------------------------------------------


def _subject_positions(tok: Any, text: str, subject: str, special: bool) -> tuple[list[int], list[int]] | None:
    """Token ids of `text` and the positions of the tokens that overlap the first occurrence of `subject`."""
    start = text.find(subject)
    if not subject or start < 0:
        return None
    enc = tok(text, add_special_tokens=special, return_offsets_mapping=True)
    end = start + len(subject)
    pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
    return (list(enc["input_ids"]), pos) if pos else None


def _first(out: Any) -> torch.Tensor:
    """A module's output tensor (decoder layers and attention return tuples)."""
    return out[0] if isinstance(out, tuple) else out


STATE_WORDS = {"mlp": "MLP output", "hidden": "output (residual stream)", "attn": "attention output"}
POSITION_WORDS = {"last": "the subject's last token", "all": "the subject's tokens", "end": "the prompt's last token"}


@torch.no_grad()
def causal_trace(model: Any, tok: Any, facts: Sequence[Any], *, noise_samples: int = 5, noise_scale: float = 3.0,
                 seed: int = 0, state: str = "mlp", positions: str = "last") -> dict[str, Any]:
    """Causal tracing of the MLPs (Meng et al. 2022, ROME): where does the model's answer come from?

    For each fact's zero-shot prompt the subject's token embeddings are corrupted with Gaussian noise
    (standard deviation `noise_scale` times that of the embedding matrix, `noise_samples` draws, seeded);
    p is the probability of the clean run's next token (the answer's first token with text: a
    whitespace-only first token is appended to the prompt) at the last position. For each layer l
    the corrupted run is repeated with layer l's MLP output at the subject's last token put back to
    its clean value; the *indirect effect* of that MLP state is
    p(restored l) - p(corrupted). Real LLMs show the largest effects at middle layers (ROME, Fig. 1).
    `state="hidden"` restores the layer's output (the residual stream) instead of its MLP output,
    `state="attn"` its attention output; `positions="all"` restores every subject token instead of the
    last, `positions="end"` the prompt's last token (where the answer is read: ROME's "late site",
    the attention that carries the subject to the prediction).
    Returns the mean clean / corrupted probability and the mean indirect effect per layer over the
    facts whose subject is found in the prompt, each with its bootstrap 95% interval over the facts.
    """
    from knowpack.probe.prompts import zero_shot_prompt

    if state not in ("mlp", "hidden", "attn") or positions not in ("last", "all", "end"):
        raise ValueError(f"state must be 'mlp', 'hidden' or 'attn' and positions 'last', 'all' or 'end', "
                         f"got {state!r}, {positions!r}")
    # any decoder with an `mlp.down_proj` per layer (not only the fast KVA path's architectures)
    layers = list(arch.decoder_layers(model))
    sites = {"mlp": [layer.mlp.down_proj for layer in layers], "hidden": layers,
             "attn": [layer.self_attn for layer in layers]}[state]
    embed = model.get_input_embeddings()
    device = embed.weight.device
    sigma = noise_scale * float(embed.weight.float().std())
    n_layers = len(layers)
    gen = torch.Generator().manual_seed(seed)
    per_fact: list[dict[str, Any]] = []
    skipped = 0
    was_training = model.training
    model.eval()
    try:
        for fact in facts:
            prompt = zero_shot_prompt(fact.question, tok)
            found = _subject_positions(tok, prompt.text, getattr(fact, "subject", "") or "", prompt.add_special_tokens)
            if found is None:
                skipped += 1
                continue
            ids, subj = found
            # "end" is the prompt's last position, known once the answer's first token is found below
            at: list[int] | slice = subj[-1:] if positions == "last" else subj if positions == "all" else slice(-1, None)
            clean: list[torch.Tensor] = [None] * n_layers  # type: ignore[list-item]
            hooks = [d.register_forward_hook(lambda _m, _i, o, j=j: clean.__setitem__(j, _first(o)[0, at].clone()))
                     for j, d in enumerate(sites)]
            try:
                # the answer's first token that carries text: a tokenizer that writes the leading space
                # as a token of its own would otherwise trace the space, which every answer starts with
                for _ in range(4):
                    logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float()
                    target = int(logits.argmax())
                    if tok.decode([target]).strip():
                        break
                    ids = [*ids, target]
            finally:
                for h in hooks:
                    h.remove()
            p_clean = float(torch.softmax(logits, -1)[target])
            if positions == "end":
                at = [len(ids) - 1]
            # rows: per noise sample, one corrupted row and one row per restored layer
            rows = noise_samples * (1 + n_layers)
            noise = torch.randn(noise_samples, len(subj), embed.weight.shape[1], generator=gen) * sigma
            noise = noise.repeat_interleave(1 + n_layers, dim=0).to(device, embed.weight.dtype)
            restore = torch.arange(rows, device=device) % (1 + n_layers) - 1  # -1: corrupted only; else the layer
            subj_t = torch.tensor(subj, device=device)

            def corrupt(_m, _i, out):
                out = out.clone()
                out[:, subj_t] += noise
                return out

            at_t = torch.tensor(at, device=device)

            def put_back(j):
                def hook(_m, _i, out):
                    sel = restore == j
                    if not bool(sel.any()):
                        return out
                    h = _first(out).clone()
                    rows_sel = sel.nonzero().squeeze(1)
                    h[rows_sel[:, None], at_t[None, :]] = clean[j].to(h.dtype)
                    return (h, *out[1:]) if isinstance(out, tuple) else h
                return hook

            hooks = [embed.register_forward_hook(corrupt)] + [d.register_forward_hook(put_back(j))
                                                              for j, d in enumerate(sites)]
            try:
                out = model(input_ids=torch.tensor([ids] * rows, device=device)).logits[:, -1].float()
            finally:
                for h in hooks:
                    h.remove()
            p = torch.softmax(out, -1)[:, target].view(noise_samples, 1 + n_layers).mean(0)
            per_fact.append({"id": getattr(fact, "id", None), "p_clean": p_clean, "p_corrupted": float(p[0]),
                             "indirect_effect": [float(x - p[0]) for x in p[1:]]})
    finally:
        model.train(was_training)

    def mean_ci(xs: list[float]) -> dict[str, Any]:
        return {"mean": sum(xs) / len(xs) if xs else None, "ci95": stats.mean_interval(xs)["ci95"]}

    return {
        "facts": len(per_fact), "skipped_subject_not_in_prompt": skipped,
        "p_clean": mean_ci([f["p_clean"] for f in per_fact]),
        "p_corrupted": mean_ci([f["p_corrupted"] for f in per_fact]),
        "indirect_effect_by_layer": [mean_ci([f["indirect_effect"][j] for f in per_fact]) for j in range(n_layers)],
        "settings": {"noise_samples": noise_samples, "noise_scale": noise_scale, "noise_sigma": sigma, "seed": seed,
                     "state": state, "positions": positions},
        "definition": f"{STATE_WORDS[state]} of one layer at {POSITION_WORDS[positions]} restored to its clean value in a "
                      "run whose subject embeddings carry Gaussian noise; indirect effect = p(answer's first token, "
                      "restored) - p(corrupted), mean over facts (ROME's causal tracing)",
        "per_fact": per_fact,
    }
