"""`knowpack world check`: measure whether a world behaves like a real LLM, property by property.

Each property of SPEC §2 ("what the world must behave like") is measured on the world's base
model, printed beside its target and written into `world.json` under `properties`:

- breadth: relations and Unknown facts (the capacity curve needs a pool well past its knee);
- paraphrases: templates per relation (distinct wordings for +k paraphrase mixing, held-out ones left);
- SliCK categories under the default probe, each >= 10%; head facts known, tail facts unknown;
- general capability: the skill benchmarks, each well above chance;
- knowledge in the MLPs, spread over layers: the per-layer MLP-zeroing profile (ablate.py);
- LoKI's premise: zeroing the q% highest-attributed down_proj rows costs >= 3x the lowest (KVA on the
  world's attribution prompts);
- injection at matched reliability: LoRA r=1 on 50 Unknown facts trained to >= 0.95 zero-shot
  reliability; negative shift, locality and benchmark drops (a full `knowpack run`).

    knowpack world check                       # the shipped world, every property (minutes)
    knowpack world check --dir DIR --no-injection --probe-limit 600

Nothing here special-cases the world: it is probed, attributed, ablated and trained through the same
code as any model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from knowpack.errors import KnowpackError
from knowpack.evaluate import stats
from knowpack.io import read_json, write_json

log = logging.getLogger(__name__)

TARGETS = {
    "relations": 20, "unknown_facts": 1000, "templates_per_relation": 12, "category_share": 0.10,
    "loki_ratio": 3.0, "injection_reliability": 0.95, "injection_negative_shift": 0.30,
    "injection_locality": 0.60, "injection_benchmark_drop": 0.15, "benchmark_margin": 0.25,
    "mlp_single_layer_max_drop": 0.90, "mlp_middle_layer_min_drop": 0.20, "trace_middle_share": 0.10,
}


def _world_paths(world: Path) -> dict[str, Any]:
    bench = world / "benchmarks"
    return {"model": world / "model", "facts": world / "facts.jsonl", "refusal": world / "refusal.jsonl",
            "mc": bench / "mc.jsonl", "qa": sorted(p for p in bench.glob("*.jsonl") if p.name != "mc.jsonl"),
            "attribution": world / "attribution.jsonl"}


def run_config(world: Path, **overrides: Any) -> Any:
    """A run config on the world in `world` by explicit paths (no `world` shortcut), as a user would write it."""
    from knowpack.config import load_config
    from knowpack.runs import RunConfig

    p = _world_paths(world)
    data: dict[str, Any] = {
        "model": str(p["model"]), "facts": str(p["facts"]), "device": "cpu", "dtype": "float32",
        "eval": {"mc": [str(p["mc"])], "qa": [str(x) for x in p["qa"]], "refusal": str(p["refusal"])},
        "train": {"loki": {"attribution_data": str(p["attribution"])}},
    }
    return load_config(RunConfig, data=data, overrides=[f"{k}={v}" for k, v in overrides.items()])


def injection_by_layer(world: Path, run_dir: Path, cfg: Any, tok: Any, scorer: Any, facts: Any,
                       say: Callable[[str], None] = print) -> dict[str, Any]:
    """Where the injection run's LoRA adapter does its work: its trained facts' reliability, the held-out known
    facts and the benchmarks with the update kept in one layer only and removed from one layer only
    (`ablate.lora_layer_profile`). In a real LLM facts are edited in the middle layers' MLPs (ROME); a world
    whose new facts can only be written where its old ones are looked up loses the old ones as it learns."""
    from knowpack import ablate
    from knowpack.adapters import load_adapted

    trained = [i for i in read_json(run_dir / "composition.json")["unknown"] if i in facts]
    known = [i for i in scorer.known_ids if i not in trained]  # HighlyKnown vs Unknown: disjoint already
    adapted, _, _ = load_adapted(str(world / "model"), run_dir / "adapter", device="cpu", dtype="float32")
    adapted.eval()
    evaluate = ablate.Scorer(cfg, tok, scorer.bench, facts, known, fact_sets={"trained_facts": trained})
    prof = ablate.lora_layer_profile(adapted, evaluate)
    for key in ("only", "without"):
        say(f"  adapter {'in one layer only' if key == 'only' else 'removed from one layer'}: " + "; ".join(
            f"L{lay['layer']} reliability {lay[key]['trained_facts']:.0%}, known {lay[key]['known_facts']:.0%}"
            for lay in prof["layers"]))
    return {**prof, "trained_facts": len(trained), "known_facts": len(known)}


def check_world(world: str | Path, *, probe_limit: int | None = None, known_sample: int = 300,
                zero_q: tuple[float, ...] = (1.0, 3.0, 5.0), injection: bool = True,
                injection_overrides: dict[str, Any] | None = None, out_dir: str | Path | None = None,
                say: Callable[[str], None] = print, write: bool = True) -> dict[str, Any]:
    """Measure every property of the world in `world`; returns them (and writes them into world.json)."""
    from knowpack import ablate
    from knowpack.facts import load_facts
    from knowpack.models import load_model
    from knowpack.runs import attribution_scores, cached_probe, probe_facts_of
    from knowpack.world.build import chance_level

    world = Path(world)
    info = read_json(world / "world.json")
    t0 = time.perf_counter()
    # lazy sampling gives the same categories with fewer generations (only P_greedy = 0 facts are sampled)
    cfg = run_config(world, **{"probe.lazy_samples": True}, **({"probe_limit": probe_limit} if probe_limit else {}))
    facts = load_facts(str(world / "facts.jsonl"), "native")
    model, tok = load_model(str(world / "model"), device="cpu", dtype="float32")
    props: dict[str, Any] = {}

    # SliCK categories and breadth
    rows, summary = cached_probe(cfg, model, tok, probe_facts_of(cfg, facts), exemplars=facts, progress=True)
    shares = summary["shares"]
    probed = len(rows)
    unknown = summary["counts"]["Unknown"]
    unknown_est = round(unknown * len(facts) / probed)
    by_bucket: dict[str, dict[str, int]] = {}
    for r in rows:
        b = by_bucket.setdefault(str(facts[r["id"]].meta.get("bucket")), {})
        b[r["category"]] = b.get(r["category"], 0) + 1
    props["slick"] = {"shares": shares, "counts": summary["counts"], "probed_facts": probed,
                      "by_bucket": by_bucket, "target": f"each category >= {TARGETS['category_share']:.0%}",
                      "holds": all(v >= TARGETS["category_share"] for v in shares.values())}
    relations = len({f.relation for f in facts})
    props["breadth"] = {"relations": relations, "unknown_facts": unknown_est, "probe_facts": len(facts),
                        "unknown_measured_on": probed,
                        "target": f">= {TARGETS['relations']} relations, >= {TARGETS['unknown_facts']} Unknown facts",
                        "holds": relations >= TARGETS["relations"] and unknown_est >= TARGETS["unknown_facts"]}
    templates = info.get("sizes", {}).get("templates_per_relation")
    props["paraphrases"] = {"templates_per_relation": templates,
                            "pretrain_templates_per_relation": info.get("sizes", {}).get(
                                "pretrain_templates_per_relation"),
                            "target": f">= {TARGETS['templates_per_relation']}",
                            "holds": bool(templates and templates >= TARGETS["templates_per_relation"])}
    say(f"  categories: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()) + f" of {probed} facts")

    # general capability, the MLP profile and LoKI's premise, on one scorer
    known = ablate.known_fact_sample(facts, rows, known_sample)
    from knowpack.evaluate.stage import resolve_benchmarks

    scorer = ablate.Scorer(cfg, tok, resolve_benchmarks(cfg.eval, cfg.model, None), facts, known)
    base = scorer(model)
    world_settings = info.get("settings", {}).get("world")
    chance = {name: chance_level(name, world_settings) for name in base}
    props["general_capability"] = {
        "benchmarks": {k: {"accuracy": v["accuracy"], "n": len(v["correct"]), "chance": chance[k]}
                       for k, v in base.items() if k != "known_facts"},
        "target": f"at least 3 skill benchmarks besides fact recall, each >= chance + {TARGETS['benchmark_margin']}",
        "holds": sum(v["accuracy"] >= chance[k] + TARGETS["benchmark_margin"] for k, v in base.items()
                     if k not in ("known_facts", "mc")) >= 3}
    say("  benchmarks: " + ", ".join(f"{k} {v['accuracy']:.1%}" for k, v in base.items()))
    profile = ablate.mlp_profile(model, scorer, base=base)
    if known:
        known_drop = [lay["benchmarks"]["known_facts"]["relative"] or 0.0 for lay in profile["layers"]]
    else:  # a model that knows none of its facts (a tiny or undertrained build) has no profile to measure
        known_drop = []
    middle = known_drop[1:-1]
    props["mlp_profile"] = {
        "known_facts_relative_drop": [round(x, 4) for x in known_drop],
        "capability_loss_pct": [round(lay["capability_loss_pct"] or 0.0, 2) for lay in profile["layers"]],
        "layers": profile["layers"],
        "target": f"no single layer's MLP holds all known facts (every drop < {TARGETS['mlp_single_layer_max_drop']}), "
                  f"a middle layer matters (some drop >= {TARGETS['mlp_middle_layer_min_drop']})",
        "known_facts": len(known),
        "holds": bool(known_drop) and max(known_drop) < TARGETS["mlp_single_layer_max_drop"] and bool(middle)
        and max(middle) >= TARGETS["mlp_middle_layer_min_drop"]}
    say("  MLP zeroed per layer, known facts lost: " + (", ".join(f"{x:.0%}" for x in known_drop) if known_drop
                                                          else "not measurable (the model knows none of its facts)"))
    # the same question by causal tracing (ROME): which layer's state at the subject carries the answer
    traces = {}
    for state, positions in (("mlp", "last"), ("hidden", "last"), ("mlp", "all"), ("attn", "end")):
        t = ablate.causal_trace(model, tok, [facts[i] for i in known], state=state, positions=positions)
        traces[f"{state}@{positions}"] = {k: v for k, v in t.items() if k != "per_fact"}
    mlp_last = traces["mlp@last"]
    effect = [e["mean"] for e in mlp_last["indirect_effect_by_layer"]]
    total = (mlp_last["p_clean"]["mean"] - mlp_last["p_corrupted"]["mean"]) if mlp_last["facts"] else None
    peak = max(range(len(effect)), key=lambda j: effect[j]) if effect and effect[0] is not None else None
    props["causal_trace"] = {
        **traces, "facts": mlp_last["facts"],
        "target": "ROME's finding in real LLMs: the MLP state at the subject's last token matters most in a middle "
                  f"layer; here: the largest indirect effect in a middle layer and >= {TARGETS['trace_middle_share']:.0%} "
                  "of the total effect (p clean - p corrupted)",
        "holds": bool(peak is not None and 0 < peak < len(effect) - 1 and total and total > 0
                      and effect[peak] >= TARGETS["trace_middle_share"] * total)}
    for t in traces.values():
        if t["facts"]:
            where = f"{ablate.STATE_WORDS[t['settings']['state']]} at {ablate.POSITION_WORDS[t['settings']['positions']]}"
            say(f"  causal trace, {where}: p {t['p_clean']['mean']:.2f} clean, {t['p_corrupted']['mean']:.2f} "
                "corrupted; indirect effect by layer " + ", ".join(f"{e['mean']:+.3f}" for e in t["indirect_effect_by_layer"]))
    scores = attribution_scores(cfg, model, tok, progress=True)
    premise = {}
    for q in zero_q:
        res = ablate.strategy_ablation(model, scores, q, ("layer_balanced_highest", "layer_balanced_lowest", "random"),
                                       scorer, base=base)
        loss = {s: r["capability_loss_pct"] for s, r in res["strategies"].items()}
        ratio = loss["layer_balanced_highest"] / loss["layer_balanced_lowest"] \
            if loss["layer_balanced_lowest"] and loss["layer_balanced_lowest"] > 0 else None
        # highest vs lowest, paired over every scored question (benchmarks and known facts pooled): a
        # ratio of two losses that are a few questions each is noise, so the premise needs this interval
        lowest, highest = ablate.paired_outcomes(res, "layer_balanced_lowest", "layer_balanced_highest")
        paired = stats.paired_difference(lowest, highest)
        significant = paired["ci95"] is not None and paired["ci95"][1] < 0
        premise[str(q)] = {"capability_loss_pct": loss, "highest_over_lowest": ratio,
                           "highest_minus_lowest_correct": {**paired, "definition": (
                               "share of questions answered after zeroing the highest rows minus after zeroing the "
                               "lowest, paired over the questions of every benchmark and the known facts")},
                           "significant": significant, "detail": res["strategies"]}
        say(f"  zeroing {q:g}% of rows: highest {loss['layer_balanced_highest']:.2f}%, lowest "
            f"{loss['layer_balanced_lowest']:.2f}%, random {loss['random']:.2f}% capability loss; highest - lowest "
            f"answered {stats.interval_text(paired['ci95'])} of {len(lowest)} questions"
            + ("" if significant else " (within noise)"))
    props["loki_premise"] = {
        "by_q": premise, "attribution_prompts": int(scores.shape[0]),
        "target": f"zeroing the q% highest-attributed rows costs >= {TARGETS['loki_ratio']}x the lowest, for a small q, "
                  "and more questions are lost (paired 95% interval below 0)",
        "holds": any(p["significant"] and ((p["highest_over_lowest"] is None
                                            and p["capability_loss_pct"]["layer_balanced_highest"] > 0)
                                           or (p["highest_over_lowest"] or 0) >= TARGETS["loki_ratio"])
                     for p in premise.values())}

    if injection:
        from knowpack.runs import full_run

        over = {"train.method": "lora", "compose.n_unknown": 50, "compose.eval_size": 200, "train.lora.r": 1,
                "train.lora.alpha": 2, "train.loss_on": "answer", "train.max_grad_norm": 1.0,
                "train.early_stopping.enabled": True, "train.early_stopping.reliability": 0.95,
                "train.early_stopping.max_retention_drop": 1.0, "train.early_stopping.every": 5,
                "probe.lazy_samples": True, **(injection_overrides or {})}
        run_cfg = run_config(world, **({"probe_limit": probe_limit} if probe_limit else {}), **over)
        run_dir = Path(out_dir or world / ".check") / "injection"
        m = full_run(run_cfg, run_dir, progress=True)
        h = m["headline"]
        props["injection"] = {
            "settings": over, "run_dir": str(run_dir), "steps": m["run"]["steps"],
            "reliability_zero_shot": h["reliability_zero_shot"], "negative_shift": h["negative_shift"],
            "negative_shift_floor": h["negative_shift_floor"], "positive_shift": h["positive_shift"],
            "locality": h["locality"], "benchmark_drop_relative": h["benchmark_drop_relative"],
            "mean_benchmark_drop_relative": h["mean_benchmark_drop_relative"], "ci95": h["ci95"],
            "target": f"zero-shot reliability >= {TARGETS['injection_reliability']}, negative shift <= "
                      f"{TARGETS['injection_negative_shift']}, locality >= {TARGETS['injection_locality']}, mean "
                      f"benchmark drop <= {TARGETS['injection_benchmark_drop']:.0%}",
            "holds": (h["reliability_zero_shot"] or 0) >= TARGETS["injection_reliability"]
            and h["negative_shift"] <= TARGETS["injection_negative_shift"]
            and h["locality"] >= TARGETS["injection_locality"]
            and (h["mean_benchmark_drop_relative"] or 0) <= TARGETS["injection_benchmark_drop"]}
        say(f"  LoRA r=1 on 50 facts: zero-shot reliability {h['reliability_zero_shot']:.0%} in {m['run']['steps']} "
            f"steps, negative shift {h['negative_shift']:.1%} (floor {h['negative_shift_floor'] or 0:.1%}), "
            f"locality {h['locality']:.0%}, mean benchmark drop {h['mean_benchmark_drop_relative'] or 0:.1%}")
        try:
            props["injection"]["by_layer"] = injection_by_layer(world, run_dir, cfg, tok, scorer, facts, say)
        except KnowpackError as exc:  # e.g. an override that trains DoRA: no update to take out of a layer
            props["injection"]["by_layer"] = {"skipped": str(exc)}
            say(f"  adapter per layer: not measured ({exc})")
    props["measured_seconds"] = round(time.perf_counter() - t0, 1)
    if write:
        info["properties"] = props
        write_json(world / "world.json", info)
    return props
