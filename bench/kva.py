"""Benchmark: KVA `fast` vs `reference` on the same model and prompts (SPEC §10).

    .venv/bin/python bench/kva.py                        # tiny Llama on CPU, about half a minute
    .venv/bin/python bench/kva.py --shape llama-8b --device cuda --dtype bfloat16 --prompts 4 --reference-prompts 1

Uses a random Llama of the given shape (default: hidden 256, 8 layers, FFN 1024), or a model
directory with --model (`--model world`: the embedded world's 6-layer base model). The fast path's
advantage grows with the number of layers L (the reference runs L*m full forward passes per prompt),
so the 6-layer world model shows less of it than the 8-layer default, and an 8B model's 32 layers
more. Prompts are random token ids (BOS first) of exactly --tokens tokens. The fast path attributes
--prompts prompts in groups of --batch-prompts (the library's default unless given); the reference,
one prompt at a time, the first --reference-prompts of them. After one warm-up prompt each, the two
are timed in interleaved chunks of one group, so that load from other processes falls on both alike.

The last line printed is a JSON object:
    ratio          reference seconds per prompt / fast seconds per prompt
    max_rel_diff   max over prompts of  max|fast - reference| / max|reference|  (within one prompt's
                   [L, D] scores; the reference is the yardstick)
plus seconds per prompt of each method, the settings, and `fast_breakdown_s_per_prompt`: the fast
path's seconds per prompt in its prefix pass, the clean last-token pass, the batched forward and
backward of the L*m perturbed last-token rows, the score arithmetic, and `other` (grouping and
bookkeeping outside those). Goal (SPEC 10): ratio >= 50 on CPU at 150 tokens, 8 layers, m = 7 (about
80 is the ideal: one prefix pass against L*m full forward-backward passes) and max_rel_diff <= 1e-5
in float32.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other processes, spinning
# threads that wait for a descheduled peer made every small op slow (about 10x here, and worst
# for the many small ops of the fast path). Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from knowpack.methods.loki.kva import attribute_ids, default_batch_prompts, max_rel_diff, phase_times  # noqa: E402
from knowpack.models import load_model, resolve_device, tiny_model  # noqa: E402

WORLD_MODEL = ROOT / "src" / "knowpack" / "data" / "world" / "model"
SHAPES = {
    # Llama-3.1-8B: hidden 4096, 32 layers, FFN 14336, 32 heads, 8 KV heads, vocab 128256.
    "llama-8b": dict(hidden=4096, layers=32, ffn=14336, heads=32, kv_heads=8, vocab=128256),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="local model directory, or 'world' for the embedded world's base model "
                                   "(default: a random Llama of --shape / --hidden / --layers)")
    p.add_argument("--shape", choices=sorted(SHAPES), help="preset shape of the random Llama")
    p.add_argument("--hidden", type=int, default=None, help="hidden size D of the random Llama (default 256)")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default 8)")
    p.add_argument("--ffn", type=int, default=None, help="FFN size d_ff (default 4 x hidden)")
    p.add_argument("--heads", type=int, default=None, help="attention heads (default hidden / 64)")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default heads / 2)")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary size (default 320)")
    p.add_argument("--prompts", type=int, default=16, help="prompts the fast path attributes")
    p.add_argument("--reference-prompts", type=int, default=8,
                   help="time the reference on only this many of the prompts (default 8; its seconds per "
                        "prompt do not depend on how many)")
    p.add_argument("--tokens", type=int, default=150, help="tokens per prompt")
    p.add_argument("--steps", type=int, default=7, help="Riemann steps m")
    p.add_argument("--batch-prompts", type=int, default=None,
                   help="prompts per batched fast pass (default: the library's, 16 on a CPU, 4 on a GPU)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=2, help="CPU threads (the build machine has 2 shared cores)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    shape_options = [o for o in ("shape", "hidden", "layers", "ffn", "heads", "kv_heads", "vocab")
                     if getattr(args, o) is not None]
    if args.model and shape_options:
        p.error(f"--model loads a model of its own shape; drop --{shape_options[0].replace('_', '-')}")
    return args


def build_model(args: argparse.Namespace):
    dtype = getattr(torch, args.dtype)
    device = resolve_device(args.device)
    path = (WORLD_MODEL if args.model == "world" else Path(args.model)) if args.model else None
    if path is not None:
        model, _ = load_model(path, device=str(device), dtype=args.dtype, with_tokenizer=False)
        return model, str(path)
    shape = dict(SHAPES[args.shape]) if args.shape else {}
    hidden = args.hidden or shape.get("hidden", 256)
    heads = args.heads or shape.get("heads", max(1, hidden // 64))
    cfg = dict(hidden_size=hidden, layers=args.layers or shape.get("layers", 8),
               intermediate_size=args.ffn or shape.get("ffn", 4 * hidden), heads=heads,
               kv_heads=args.kv_heads or shape.get("kv_heads", max(1, heads // 2)),
               vocab_size=args.vocab or shape.get("vocab", 320), max_positions=max(256, args.tokens + 8))
    if device.type == "cuda":
        torch.set_default_device(device)  # initialise big random models on the GPU directly
    try:
        model = tiny_model("llama", seed=args.seed, dtype=dtype, **cfg)
    finally:
        torch.set_default_device(None)
    model.to(device)
    name = args.shape or "random-llama(hidden={hidden_size}, layers={layers}, ffn={intermediate_size})".format(**cfg)
    return model, name


def timed(model, prompts, method, args, phases: dict | None = None) -> tuple[torch.Tensor, float]:
    """Scores and seconds; with `phases`, the fast path's time per phase is added to it."""
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    with phase_times() if phases is not None else contextlib.nullcontext() as laps:
        scores = attribute_ids(model, prompts, method=method, steps=args.steps, batch_prompts=args.batch_prompts,
                               progress=False)
    sync()
    if phases is not None:
        for name, seconds in laps.items():
            phases[name] = phases.get(name, 0.0) + seconds
    return scores, time.perf_counter() - start


def breakdown(phases: dict, total: float, n: int) -> dict:
    """Seconds per prompt of each phase of the fast path, and `other` (total minus the phases)."""
    out = {name: round(seconds / n, 5) for name, seconds in phases.items()}
    out["other"] = round((total - sum(phases.values())) / n, 5)
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    model, name = build_model(args)
    vocab = model.get_output_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(args.seed)
    bos = model.config.bos_token_id if model.config.bos_token_id is not None else 1
    prompts = [[bos] + torch.randint(3, vocab, (args.tokens - 1,), generator=gen).tolist()
               for _ in range(args.prompts + 1)]
    warm, prompts = prompts[:1], prompts[1:]
    n_ref = min(args.reference_prompts or args.prompts, args.prompts)
    if args.batch_prompts is None:
        args.batch_prompts = default_batch_prompts(model)
    for method in ("fast", "reference"):
        timed(model, warm, method, args)
    # Interleave the two methods chunk by chunk, so that load from other processes on a shared
    # machine falls on both alike.
    fast_parts, ref_parts, t_fast, t_ref, phases = [], [], 0.0, 0.0, {}
    for lo in range(0, len(prompts), args.batch_prompts):
        chunk = prompts[lo: lo + args.batch_prompts]
        scores, seconds = timed(model, chunk, "fast", args, phases)
        fast_parts.append(scores)
        t_fast += seconds
        ref_chunk = chunk[: max(0, n_ref - lo)]
        if ref_chunk:
            scores, seconds = timed(model, ref_chunk, "reference", args)
            ref_parts.append(scores)
            t_ref += seconds
    fast, ref = torch.cat(fast_parts), torch.cat(ref_parts)
    fast_pp, ref_pp = t_fast / len(prompts), t_ref / n_ref
    result = {
        "bench": "kva",
        "ratio": round(ref_pp / fast_pp, 2),
        "max_rel_diff": max_rel_diff(fast[:n_ref], ref),
        "rel_diff_definition": "max over prompts of max|fast-reference| / max|reference|",
        "fast_s_per_prompt": round(fast_pp, 4),
        "reference_s_per_prompt": round(ref_pp, 4),
        "model": name,
        "layers": len(model.model.layers),
        "hidden": model.config.hidden_size,
        "ffn": model.config.intermediate_size,
        "prompts": len(prompts),
        "reference_prompts": n_ref,
        "tokens": args.tokens,
        "steps": args.steps,
        "batch_prompts": args.batch_prompts,
        "device": str(next(model.parameters()).device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "fast_breakdown_s_per_prompt": breakdown(phases, t_fast, len(prompts)),
    }
    print(f"fast: {fast_pp:.4f} s/prompt, reference: {ref_pp:.4f} s/prompt ({n_ref} prompts): "
          f"ratio {result['ratio']}x, max relative difference {result['max_rel_diff']:.2e}")
    parts = result["fast_breakdown_s_per_prompt"]
    print("fast path per prompt: " + ", ".join(f"{name} {seconds * 1e3:.1f} ms ({seconds / fast_pp:.0%})"
                                               for name, seconds in parts.items()))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
