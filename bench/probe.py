"""Probing benchmark: the batched engine vs per-prompt `model.generate` calls, default probe settings.

    .venv/bin/python bench/probe.py [--facts 40] [--batch-size 32] [--threads 2] [--world DIR]

Uses the embedded world (src/knowpack/data/world/model and facts.jsonl) when it exists; otherwise a
random Llama of the world's shape with a generated fact set (said in the output). Both paths answer
the prompts a default probe asks (`ProbeSettings()`: 10 prompts per fact, 4 same-relation shots
drawn per question, so nearly every prompt has its own few-shot prefix) with what it asks for each:
one greedy answer and 16 samples at temperature 0.5, top-k 40, at most 32 tokens. The reference is
a plain loop, per prompt one greedy `generate` and one sampling `generate` with
`num_return_sequences=16`, given the same early stop at the end of the answer line. The two are
timed in interleaved chunks, so that load from other processes falls on both alike.

Checked in the same run: greedy answers agree (goal >= 0.995); the sampled answers follow one
distribution (the engine's draws are its own common random numbers, transformers' its own, so only
distributions can agree): per prompt, the share of samples that are correct and the share equal
to the greedy answer, compared as paired differences over prompts (|z| < 3).

Also reported: `ratio_greedy_only`, the greedy-only pass against the greedy loop (with a distinct
prefix per prompt this is bounded by the prefill, which both paths must compute), the ratio against
a greedy loop without the early stop, and a full `probe_facts` rate. The last line printed is a JSON
object with the figures.
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
from knowpack.probe.engine import naive_sample, stable_key
from knowpack.probe.match import RefusalDetector, matches

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


def _paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of the per-prompt differences a - b and its z score (mean / standard error)."""
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / max(1, len(d) - 1)
    se = (var / len(d)) ** 0.5
    return mean, (mean / se if se > 0 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=WORLD, help="world directory (model/, facts.jsonl)")
    ap.add_argument("--facts", type=int, default=40, help="facts probed (each with the default 10 prompts)")
    ap.add_argument("--batch-size", type=int, default=ProbeSettings().batch_size, help="engine prompts per batch")
    ap.add_argument("--prefill-tokens", type=int, default=None,
                    help="tokens per prefill forward (default: the engine's, default_prefill_tokens)")
    ap.add_argument("--chunk", type=int, default=128, help="prompts per interleaved timing chunk")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default 2, or 1 when the machine is already busy: spinning threads "
                         "on oversubscribed cores make every timing several times slower)")
    ap.add_argument("--plain-subset", type=int, default=40, help="prompts timed for the loop without early stop")
    ap.add_argument("--probe-facts", type=int, default=24, help="facts for the full-probe rate; 0: skip")
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
    settings = ProbeSettings()  # the defaults a probe runs with
    k, n_samples = settings.n_prompts, settings.n_samples
    per_fact = build_probe_prompts(facts, tok, n_prompts=k, shots=settings.shots, seed=settings.seed,
                                   exemplars=pool, mode=settings.exemplars)
    prompts = [p for ps in per_fact for p in ps]
    keys = [stable_key(f"{fact.id}|{i}") for fact in facts for i in range(k)]  # as probe_facts keys them
    gen = dict(temperature=settings.temperature, top_k=settings.top_k, max_new_tokens=settings.max_new_tokens)
    print(f"prompts: {len(prompts)} ({k} per fact, {settings.shots} shots, exemplars {settings.exemplars}: "
          f"{len({p.prefix for p in prompts})} distinct few-shot prefixes); per prompt greedy + {n_samples} samples "
          f"at T={settings.temperature}, top-k {settings.top_k}, at most {settings.max_new_tokens} tokens", flush=True)

    engine = HFEngine(model, tok, batch_size=args.batch_size, prefill_tokens=args.prefill_tokens)
    engine.generate(prompts[:8], n_samples=2, sample_keys=keys[:8], **gen)  # warm-up (stop-token table, allocator)
    naive_generate(model, tok, prompts[:2])
    naive_sample(model, tok, prompts[:1], n_samples=n_samples, **gen)

    # Interleaved chunk by chunk, so that load from other processes falls on both paths alike.
    # CPU time is kept beside wall time: on a shared machine it counts only the time this process ran.
    t = dict.fromkeys(("engine", "engine_greedy", "naive_greedy", "naive_samples"), 0.0)
    cpu = dict.fromkeys(t, 0.0)
    outs, greedy_only, slow, slow_samples = [], [], [], []
    for lo in range(0, len(prompts), args.chunk):
        chunk, chunk_keys = prompts[lo:lo + args.chunk], keys[lo:lo + args.chunk]
        runs = (lambda: outs.extend(engine.generate(chunk, greedy=True, n_samples=n_samples, sample_keys=chunk_keys,
                                                    seed=settings.seed, **gen)),
                lambda: greedy_only.extend(c.greedy for c in engine.generate(chunk, greedy=True, n_samples=0, **gen)),
                lambda: slow.extend(naive_generate(model, tok, chunk, max_new_tokens=settings.max_new_tokens)),
                lambda: slow_samples.extend(naive_sample(model, tok, chunk, n_samples=n_samples, seed=lo, **gen)))
        for name, run in zip(t, runs):
            w0, c0 = time.perf_counter(), time.process_time()
            run()
            t[name] += time.perf_counter() - w0
            cpu[name] += time.process_time() - c0
    n = len(prompts)
    t_naive = t["naive_greedy"] + t["naive_samples"]
    print(f"engine, greedy + {n_samples} samples: {t['engine']:.2f} s ({n / t['engine']:.1f} prompts/s, "
          f"{n * (1 + n_samples) / t['engine']:.0f} answers/s)", flush=True)
    print(f"naive loop, one greedy and one {n_samples}-sample generate per prompt (stops at newline): {t_naive:.2f} s "
          f"({n / t_naive:.2f} prompts/s; greedy {t['naive_greedy']:.2f} s, samples {t['naive_samples']:.2f} s)",
          flush=True)
    print(f"engine, greedy only: {t['engine_greedy']:.2f} s ({n / t['engine_greedy']:.1f} prompts/s)", flush=True)

    fast = [c.greedy for c in outs]
    agree = sum(a == b for a, b in zip(fast, slow)) / n
    assert greedy_only == fast, "the greedy-only pass must give the greedy answers of the full pass"
    refusal = RefusalDetector(settings.refusal_patterns)

    def correct(answer: str, fact) -> bool:
        return not refusal(answer, fact.answers) and matches(answer, fact.answers, settings.match)

    prompt_fact = [fact for fact in facts for _ in range(k)]
    share = lambda rows, f: [sum(map(f, r, [i] * len(r))) / len(r) for i, r in enumerate(rows)]  # noqa: E731
    ours, theirs = [c.samples for c in outs], slow_samples
    ok = lambda x, i: correct(x, prompt_fact[i])  # noqa: E731
    same = lambda x, i: x == slow[i]  # noqa: E731
    p_ours, p_theirs = share(ours, ok), share(theirs, ok)
    g_ours, g_theirs = share(ours, same), share(theirs, same)
    d_ok, z_ok = _paired(p_ours, p_theirs)
    d_same, z_same = _paired(g_ours, g_theirs)
    consistent = abs(z_ok) < 3 and abs(z_same) < 3
    print(f"greedy agreement with the naive loop: {agree:.4f}; mean answer length {sum(map(len, fast)) / n:.1f} "
          f"chars", flush=True)
    print(f"sampled answers correct: engine {sum(p_ours) / n:.4f}, naive {sum(p_theirs) / n:.4f} "
          f"(paired difference {d_ok:+.4f}, z {z_ok:+.2f}); equal to the greedy answer: engine "
          f"{sum(g_ours) / n:.4f}, naive {sum(g_theirs) / n:.4f} (z {z_same:+.2f}); "
          f"{'consistent' if consistent else 'NOT consistent'} with one distribution (|z| < 3)", flush=True)

    sub = prompts[:: max(1, n // args.plain_subset)][:args.plain_subset]
    t0 = time.perf_counter()
    naive_generate(model, tok, sub, max_new_tokens=settings.max_new_tokens, stop_early=False)
    t_plain = (time.perf_counter() - t0) / len(sub) * n
    print(f"plain greedy generate loop (no early stop), scaled from {len(sub)} prompts: {t_plain:.2f} s", flush=True)

    ratio_cpu = (cpu["naive_greedy"] + cpu["naive_samples"]) / cpu["engine"]
    print(f"ratio: {t_naive / t['engine']:.1f}x wall time, {ratio_cpu:.1f}x CPU time; greedy only "
          f"{t['naive_greedy'] / t['engine_greedy']:.1f}x", flush=True)
    result = {"bench": "probe", "measures": f"greedy + {n_samples} samples per prompt, default probe settings",
              "ratio": round(t_naive / t["engine"], 2), "ratio_cpu": round(ratio_cpu, 2), "agreement": round(agree, 4),
              "samples_correct_engine": round(sum(p_ours) / n, 4), "samples_correct_naive": round(sum(p_theirs) / n, 4),
              "samples_z": round(z_ok, 2), "samples_equal_greedy_z": round(z_same, 2),
              "samples_consistent": consistent, "ratio_greedy_only": round(t["naive_greedy"] / t["engine_greedy"], 2),
              "ratio_greedy_vs_plain_loop": round(t_plain / t["engine_greedy"], 2), "prompts": n,
              "engine_s": round(t["engine"], 3), "naive_s": round(t_naive, 3),
              "engine_greedy_s": round(t["engine_greedy"], 3), "naive_greedy_s": round(t["naive_greedy"], 3),
              "model": source, "threads": args.threads, "batch_size": args.batch_size,
              "prefill_tokens": engine.prefill_tokens, "load_avg": round(load, 1)}
    if args.probe_facts:
        subset = FactSet(list(facts)[:args.probe_facts])
        t0 = time.perf_counter()
        rows = probe_facts(model, tok, subset, replace(settings, batch_size=args.batch_size), progress=False,
                           exemplars=pool)
        t_probe = time.perf_counter() - t0
        counts = {c: sum(r["category"] == c for r in rows) for c in ("HighlyKnown", "MaybeKnown", "WeaklyKnown",
                                                                     "Unknown")}
        print(f"full probe (probe_facts, default settings): {len(rows) / t_probe:.2f} facts/s; {counts}", flush=True)
        result["probe_facts_per_s"] = round(len(rows) / t_probe, 3)
        t0 = time.perf_counter()
        probe_facts(model, tok, subset, replace(settings, batch_size=args.batch_size, lazy_samples=True),
                    progress=False, exemplars=pool)
        t_lazy = time.perf_counter() - t0
        print(f"full probe with lazy_samples: {len(rows) / t_lazy:.2f} facts/s", flush=True)
        result["probe_lazy_facts_per_s"] = round(len(rows) / t_lazy, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
