"""Probing benchmark: the batched engine vs one `model.generate` per prompt, greedy, same prompts.

    .venv/bin/python bench/probe.py [--facts 300] [--prompts-per-fact 2] [--threads 2] [--world DIR]

Uses the embedded world (src/knowpack/data/world/model and facts.jsonl) when it exists; otherwise a
random Llama of the world's shape with a generated fact set (said in the output). Both paths get
the same SliCK few-shot prompts (4 same-relation shots). The naive loop is given the same early stop
at the end of the answer line, so the ratio measures batching and shared prefixes, not only the
stop; the ratio against a plain loop without it (timed on a subset, scaled per prompt) is reported
as `ratio_vs_plain_loop`. The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from knowpack.facts import Fact, FactSet, load_facts
from knowpack.models import load_model, tiny_model, tiny_tokenizer
from knowpack.probe import HFEngine, ProbeSettings, build_probe_prompts, naive_generate, probe_facts

WORLD = Path(__file__).resolve().parent.parent / "src" / "knowpack" / "data" / "world"


def fallback_world(n_facts: int, seed: int = 0):
    """A random Llama of the world's shape (hidden 128, 4 layers, FFN 512) and generated facts.

    A random model rarely emits a newline, so its answers would all run to max_new_tokens; its
    newline token's output row becomes a scaled copy of the row of a token that most greedy answers
    reach within a few steps, so that answers end there, as a trained model's short answers do.
    """
    rng = random.Random(seed)
    tok = tiny_tokenizer()
    model = tiny_model("llama", seed=seed, vocab_size=len(tok), hidden_size=128, layers=4, intermediate_size=512,
                       heads=4, kv_heads=4, max_positions=512)
    relations = {"birthplace": "Where was {} born?", "employer": "Who employs {}?",
                 "profession": "What is the profession of {}?", "founded": "In which year did {} found a company?"}
    syll = ["ka", "lo", "mi", "ra", "ten", "vo", "zu", "bel", "dor", "fi", "gan", "sol"]

    def word(n: int) -> str:
        return "".join(rng.choice(syll) for _ in range(n)).title()

    facts = [Fact(id=f"b{i}", question=relations[rel].format(f"{word(3)} {word(2)}"), relation=rel,
                  answers=(word(2),)) for i, rel in ((i, list(relations)[i % len(relations)]) for i in range(n_facts))]
    newline = tok.convert_tokens_to_ids("Ċ")
    with torch.no_grad():  # which token would end most greedy answers after a few tokens
        enc = tok([f"Question: {f.question}\nAnswer:" for f in facts[:32]], return_tensors="pt", padding=True,
                  padding_side="left")
        runs = model.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=0)[:, enc["input_ids"].shape[1]:]
        score: dict[int, int] = {}
        for run in runs.tolist():
            for t in {t for t in run[1:8] if t not in run[:1]}:
                score[t] = score.get(t, 0) + 1
        end = max(score, key=lambda t: (score[t], -t))
        model.lm_head.weight[newline] = model.lm_head.weight[end] * 1.05
    return model, tok, FactSet(facts, source="generated"), "tiny random Llama (world shape) + generated facts"


def load_world(n_facts: int, world: Path = WORLD):
    if (world / "model" / "config.json").exists() and (world / "facts.jsonl").exists():
        model, tok = load_model(world / "model", device="cpu", dtype="float32")
        pool = load_facts(world / "facts.jsonl")
        return model, tok, pool.sample(n_facts, seed=0), pool, f"world at {world}"
    model, tok, facts, source = fallback_world(n_facts)
    return model, tok, facts, facts, source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=WORLD, help="world directory (model/, facts.jsonl)")
    ap.add_argument("--facts", type=int, default=300)
    ap.add_argument("--prompts-per-fact", type=int, default=2, help="first k of the 10 SliCK prompts of each fact")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default 2, or 1 when the machine is already busy: spinning threads "
                         "on oversubscribed cores make every timing several times slower)")
    ap.add_argument("--plain-subset", type=int, default=40, help="prompts timed for the loop without early stop")
    ap.add_argument("--probe-facts", type=int, default=24, help="facts (of one relation) for the full-probe rate; 0: skip")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores:
        print(f"warning: load average {load:.1f} on {cores} cores; timings are noisy", flush=True)
    if args.threads is None:
        args.threads = 1 if load > cores else 2
    torch.set_num_threads(args.threads)
    model, tok, facts, pool, source = load_world(args.facts, args.world)
    print(f"model: {source}; {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{len(facts)} facts, {args.threads} threads", flush=True)
    per_fact = build_probe_prompts(facts, tok, n_prompts=10, shots=4, seed=0, exemplars=pool)
    prompts = [p for ps in per_fact for p in ps[:args.prompts_per_fact]]
    print(f"prompts: {len(prompts)} ({len({p.prefix for p in prompts})} distinct few-shot prefixes)", flush=True)

    engine = HFEngine(model, tok, batch_size=args.batch_size)
    engine.generate(prompts[:8])  # warm-up (stop-token table, allocator)
    naive_generate(model, tok, prompts[:2])

    t0 = time.perf_counter()
    fast = [c.greedy for c in engine.generate(prompts, greedy=True, n_samples=0, max_new_tokens=32)]
    t_engine = time.perf_counter() - t0
    print(f"engine: {t_engine:.2f} s ({len(prompts) / t_engine:.1f} prompts/s)", flush=True)

    t0 = time.perf_counter()
    slow = naive_generate(model, tok, prompts, max_new_tokens=32)
    t_naive = time.perf_counter() - t0
    print(f"naive generate loop (stops at newline): {t_naive:.2f} s ({len(prompts) / t_naive:.1f} prompts/s)",
          flush=True)
    agree = sum(a == b for a, b in zip(fast, slow)) / len(prompts)
    print(f"greedy agreement: {agree:.4f}; mean answer length {sum(map(len, fast)) / len(fast):.1f} chars", flush=True)

    sub = prompts[:: max(1, len(prompts) // args.plain_subset)][:args.plain_subset]
    t0 = time.perf_counter()
    naive_generate(model, tok, sub, max_new_tokens=32, stop_early=False)
    t_plain = (time.perf_counter() - t0) / len(sub) * len(prompts)
    print(f"plain generate loop (32 tokens, no stop), scaled from {len(sub)} prompts: {t_plain:.2f} s", flush=True)

    result = {"bench": "probe", "ratio": round(t_naive / t_engine, 2), "agreement": round(agree, 4),
              "ratio_vs_plain_loop": round(t_plain / t_engine, 2), "prompts": len(prompts),
              "engine_s": round(t_engine, 3), "naive_s": round(t_naive, 3), "model": source,
              "threads": args.threads, "batch_size": args.batch_size, "load_avg": round(load, 1)}
    if args.probe_facts:
        settings = ProbeSettings(batch_size=args.batch_size)
        # one relation, so prompts share prefixes in groups as in a full probe (where groups are large)
        rel = facts[0].relation
        subset = FactSet([f for f in facts if f.relation == rel][:args.probe_facts])
        t0 = time.perf_counter()
        rows = probe_facts(model, tok, subset, settings, progress=False, exemplars=pool)
        t_probe = time.perf_counter() - t0
        counts = {c: sum(r["category"] == c for r in rows) for c in ("HighlyKnown", "MaybeKnown", "WeaklyKnown",
                                                                     "Unknown")}
        print(f"full probe (10 prompts x (greedy + 16 samples)): {len(rows) / t_probe:.2f} facts/s; {counts}",
              flush=True)
        result["probe_facts_per_s"] = round(len(rows) / t_probe, 3)
        t0 = time.perf_counter()
        probe_facts(model, tok, subset, replace(settings, lazy_samples=True), progress=False, exemplars=pool)
        t_lazy = time.perf_counter() - t0
        print(f"full probe with lazy_samples: {len(rows) / t_lazy:.2f} facts/s", flush=True)
        result["probe_lazy_facts_per_s"] = round(len(rows) / t_lazy, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
