"""GPU benchmarks in one command: KVA on an 8B-shaped Llama, probing on a 1B-shaped Llama, peak memory.

    .venv/bin/python bench/gpu.py                        # needs a CUDA GPU; about 5 minutes on one
    .venv/bin/python bench/gpu.py --device cpu --tiny    # smoke run: the same code on tiny shapes
    make bench-gpu

Models are built with random weights from their shapes (no downloads), in bfloat16:
- KVA: Llama-3.1-8B's shape (hidden 4096, 32 layers, FFN 14336, 32 heads / 8 KV heads, vocab
  128256) on prompts of about 150 tokens (random ids, lengths 140-160: the length of the MMLU
  prompt KVA attributes). Reported: seconds per sample of the fast path (m = 7), against the LoKI
  paper's 9.69 s per sample (one RTX 4090, Llama-3.1-8B) and against the reference path timed in
  the same run on `--reference-prompts` of the prompts, whose scores it must match (bfloat16
  rounding only: the relative difference is printed); the fast path's time per phase.
- Probing: Llama-3.2-1B's shape (hidden 2048, 16 layers, FFN 8192, 32 heads / 8 KV heads, vocab
  128256), the default probe (`ProbeSettings()`: 10 prompts per fact, 4 shots drawn per question,
  greedy + 16 samples at T=0.5, top-k 40, at most 32 tokens) on the embedded world's facts, with
  its tokenizer widened by placeholder tokens to the model's vocabulary. Reported: answers per
  second, and the per-prompt `generate` loop (one greedy and one 16-sample call) timed on
  `--naive-prompts` prompts, with the greedy answers' agreement. Random weights are the engine's
  worst case: almost no answer ends before 32 tokens (a trained model's end in a few) and samples
  seldom share tokens, so the figure is a floor.
- Peak GPU memory (`torch.cuda.max_memory_allocated`) of each part.

Prints one line per figure and, last, a JSON object with all of them. Without CUDA it exits with
status 2 (unless `--device cpu --tiny`).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from knowpack.facts import load_facts  # noqa: E402
from knowpack.methods.loki.kva import attribute_ids, max_rel_diff, phase_times  # noqa: E402
from knowpack.models import load_tokenizer, set_seed, tiny_config, tiny_tokenizer  # noqa: E402
from knowpack.probe import HFEngine, ProbeSettings, build_probe_prompts, naive_generate  # noqa: E402
from knowpack.probe.engine import naive_sample, stable_key  # noqa: E402

WORLD = ROOT / "src" / "knowpack" / "data" / "world"
PAPER_KVA_S_PER_SAMPLE = 9.69  # LoKI paper: KVA on Llama-3.1-8B, one RTX 4090
SHAPES = {
    "llama-3.1-8b": dict(hidden_size=4096, layers=32, intermediate_size=14336, heads=32, kv_heads=8,
                         vocab_size=128256),
    "llama-3.2-1b": dict(hidden_size=2048, layers=16, intermediate_size=8192, heads=32, kv_heads=8,
                         vocab_size=128256),
    "tiny-kva": dict(hidden_size=64, layers=3, intermediate_size=128, heads=4, kv_heads=2, vocab_size=512),
    "tiny-probe": dict(hidden_size=64, layers=2, intermediate_size=128, heads=4, kv_heads=2, vocab_size=4096),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (only with --tiny)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and few prompts: a smoke run of the same code")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--kva-prompts", type=int, default=None, help="prompts attributed by the fast path (default 16)")
    p.add_argument("--kva-tokens", type=int, default=None, help="mean prompt length in tokens (default 150)")
    p.add_argument("--kva-batch-prompts", type=int, default=4, help="prompts per batched fast pass")
    p.add_argument("--reference-prompts", type=int, default=1, help="prompts the reference path is timed on")
    p.add_argument("--probe-facts", type=int, default=None, help="facts probed, 10 prompts each (default 32)")
    p.add_argument("--probe-batch-size", type=int, default=128, help="engine prompts per batch")
    p.add_argument("--naive-prompts", type=int, default=None, help="prompts the generate loop is timed on "
                                                                   "(default 16)")
    p.add_argument("--skip-kva", action="store_true")
    p.add_argument("--skip-probe", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    small = args.tiny
    args.kva_prompts = args.kva_prompts or (2 if small else 16)
    args.kva_tokens = args.kva_tokens or (24 if small else 150)
    args.probe_facts = args.probe_facts or (2 if small else 32)
    args.naive_prompts = args.naive_prompts or (2 if small else 16)
    return args


def check_device(args: argparse.Namespace) -> torch.device | None:
    """The device to run on, or None (after saying why) when this run cannot go ahead."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        why = (f"torch {torch.__version__} is a build without CUDA; install a CUDA build of torch"
               if torch.version.cuda is None else "no CUDA device is visible")
        print(f"bench/gpu.py needs a CUDA GPU: {why}. For a smoke run of the same code on tiny shapes: "
              "bench/gpu.py --device cpu --tiny", file=sys.stderr)
        return None
    if device.type != "cuda" and not args.tiny:
        print(f"the full shapes are for a CUDA GPU, not '{device}'; add --tiny for a smoke run", file=sys.stderr)
        return None
    return device


def build_model(shape: str, dtype: torch.dtype, device: torch.device, seed: int, max_positions: int):
    """A random Llama of `shape`, created on `device` in `dtype` (no float32 copy of a big model)."""
    from transformers import AutoModelForCausalLM

    set_seed(seed)
    cfg = tiny_config("llama", max_positions=max_positions, **SHAPES[shape])
    torch.set_default_device(device)
    try:
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    finally:
        torch.set_default_device(None)
    return model.to(device).eval()


class Clock:
    """Wall seconds of a block, with the device synchronised at both ends."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __enter__(self):
        self.sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.start


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def kva_figures(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    shape = "tiny-kva" if args.tiny else "llama-3.1-8b"
    reset_peak(device)
    model = build_model(shape, dtype, device, args.seed, max_positions=args.kva_tokens + 64)
    vocab = SHAPES[shape]["vocab_size"]
    rng = random.Random(args.seed)
    spread = max(1, args.kva_tokens // 15)

    def prompt() -> list[int]:
        return [1] + [rng.randrange(3, vocab) for _ in range(args.kva_tokens + rng.randint(-spread, spread) - 1)]

    prompts = [prompt() for _ in range(args.kva_prompts)]
    n_ref = min(args.reference_prompts, len(prompts))
    kw = dict(steps=7, batch_prompts=args.kva_batch_prompts, progress=False)
    attribute_ids(model, [prompt()], **kw)  # warm-up: kernels, allocator
    attribute_ids(model, [prompts[0][:16]], method="reference", **kw)
    reset_peak(device)
    with phase_times() as phases, Clock(device) as fast_clock:
        fast = attribute_ids(model, prompts, **kw)
    fast_peak = peak_gib(device)
    reset_peak(device)
    with Clock(device) as ref_clock:
        ref = attribute_ids(model, prompts[:n_ref], method="reference", **kw)
    fast_s, ref_s = fast_clock.seconds / len(prompts), ref_clock.seconds / n_ref
    out = {
        "kva_model": f"{shape} (random weights, {args.dtype})",
        "kva_prompts": len(prompts), "kva_mean_tokens": round(sum(map(len, prompts)) / len(prompts), 1),
        "kva_s_per_sample": round(fast_s, 4), "kva_reference_s_per_sample": round(ref_s, 3),
        "kva_ratio_vs_reference": round(ref_s / fast_s, 1), "kva_reference_prompts": n_ref,
        "kva_max_rel_diff": max_rel_diff(fast[:n_ref], ref),
        "kva_paper_s_per_sample": PAPER_KVA_S_PER_SAMPLE,
        "kva_times_under_paper": round(PAPER_KVA_S_PER_SAMPLE / fast_s, 1),
        "kva_phases_s_per_sample": {k: round(v / len(prompts), 4) for k, v in phases.items()},
        "kva_peak_gib": fast_peak, "kva_reference_peak_gib": peak_gib(device),
    }
    del model
    return out


def widened_tokenizer(vocab: int):
    """The world's tokenizer (a byte-level stand-in without it) with placeholder special tokens up to
    `vocab` ids, so that every id a random model emits decodes (to nothing)."""
    tok = load_tokenizer(str(WORLD / "model")) if (WORLD / "model" / "tokenizer.json").exists() else tiny_tokenizer()
    if len(tok) > vocab:
        raise SystemExit(f"the tokenizer has {len(tok)} ids, more than the model's {vocab}")
    tok.add_tokens([f"<|placeholder_{i}|>" for i in range(vocab - len(tok))], special_tokens=True)
    return tok


def probe_figures(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    shape = "tiny-probe" if args.tiny else "llama-3.2-1b"
    settings = ProbeSettings()
    reset_peak(device)
    model = build_model(shape, dtype, device, args.seed, max_positions=512)
    tok = widened_tokenizer(SHAPES[shape]["vocab_size"])
    pool = load_facts(WORLD / "facts.jsonl")
    facts = pool.sample(min(args.probe_facts, len(pool)), seed=args.seed)
    k, n_samples = settings.n_prompts, settings.n_samples
    prompts = [p for ps in build_probe_prompts(facts, tok, n_prompts=k, shots=settings.shots, seed=settings.seed,
                                               exemplars=pool, mode=settings.exemplars) for p in ps]
    keys = [stable_key(f"{fact.id}|{i}") for fact in facts for i in range(k)]
    gen = dict(temperature=settings.temperature, top_k=settings.top_k, max_new_tokens=settings.max_new_tokens)
    engine = HFEngine(model, tok, batch_size=args.probe_batch_size)
    engine.generate(prompts[:4], n_samples=2, **gen)  # warm-up
    reset_peak(device)
    with Clock(device) as clock:
        outs = engine.generate(prompts, greedy=True, n_samples=n_samples, sample_keys=keys, seed=settings.seed, **gen)
    engine_peak = peak_gib(device)
    sub = prompts[:args.naive_prompts]
    naive_generate(model, tok, sub[:1], max_new_tokens=2)  # warm-up
    with Clock(device) as naive_clock:
        slow = naive_generate(model, tok, sub, max_new_tokens=settings.max_new_tokens)
        naive_sample(model, tok, sub, n_samples=n_samples, **gen)
    engine_pp, naive_pp = clock.seconds / len(prompts), naive_clock.seconds / len(sub)
    agree = sum(c.greedy == s for c, s in zip(outs, slow)) / len(sub)
    out = {
        "probe_model": f"{shape} (random weights, {args.dtype})",
        "probe_prompts": len(prompts), "probe_batch_size": args.probe_batch_size,
        "probe_answers_per_s": round(len(prompts) * (1 + n_samples) / clock.seconds, 1),
        "probe_prompts_per_s": round(len(prompts) / clock.seconds, 2),
        "probe_ratio_vs_generate_loop": round(naive_pp / engine_pp, 1), "probe_naive_prompts": len(sub),
        "probe_greedy_agreement": round(agree, 4), "probe_peak_gib": engine_peak,
    }
    del model, engine
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = check_device(args)
    if device is None:
        return 2
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny shapes: one thread is fastest, and the machine may be shared
    try:
        return run(args, device)
    finally:
        torch.set_num_threads(threads)


def gib(value: float | None) -> str:
    return "n/a (not a GPU)" if value is None else f"{value} GiB"


def run(args: argparse.Namespace, device: torch.device) -> int:
    dtype = getattr(torch, args.dtype)
    result: dict = {"bench": "gpu", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "tiny": args.tiny, "torch": torch.__version__}
    if not args.skip_kva:
        r = kva_figures(args, device, dtype)
        result.update(r)
        print(f"kva: {r['kva_s_per_sample']:.4f} s per sample (fast, {r['kva_model']}, {r['kva_prompts']} prompts "
              f"of {r['kva_mean_tokens']:.0f} tokens, m=7); paper {PAPER_KVA_S_PER_SAMPLE} s -> "
              f"{r['kva_times_under_paper']}x under it", flush=True)
        print(f"kva reference: {r['kva_reference_s_per_sample']:.3f} s per sample ({r['kva_reference_prompts']} "
              f"prompts) -> fast is {r['kva_ratio_vs_reference']}x; max relative difference "
              f"{r['kva_max_rel_diff']:.2e}", flush=True)
        print("kva fast path per sample: " + ", ".join(f"{name} {s * 1e3:.1f} ms" for name, s in
                                                      r["kva_phases_s_per_sample"].items()), flush=True)
        print(f"kva peak memory: {gib(r['kva_peak_gib'])} (reference: {gib(r['kva_reference_peak_gib'])})", flush=True)
    if not args.skip_probe:
        r = probe_figures(args, device, dtype)
        result.update(r)
        print(f"probe: {r['probe_answers_per_s']} answers/s ({r['probe_prompts_per_s']} prompts/s, greedy + 16 "
              f"samples, {r['probe_model']}, {r['probe_prompts']} prompts)", flush=True)
        print(f"probe vs per-prompt generate loop: {r['probe_ratio_vs_generate_loop']}x "
              f"({r['probe_naive_prompts']} prompts); greedy agreement {r['probe_greedy_agreement']}", flush=True)
        print(f"probe peak memory: {gib(r['probe_peak_gib'])}", flush=True)
    result["load_avg"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
