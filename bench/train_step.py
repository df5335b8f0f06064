"""Training-step cost of LoKI (q=10) against full fine-tuning, with LoRA for reference.

    python bench/train_step.py [--hidden 512 --layers 8 --ffn 1536 --batch 16 --seq 96 --steps 8]

Every method trains the same randomly initialised Llama on the same batch with AdamW, each in a
fresh subprocess, so peak memory is that method's own: on CPU the peak resident set size above
the size after the model is built; on a GPU `torch.cuda.max_memory_allocated`. A worker's step time
is the median over its timed steps (after warm-up). The workers run in `--rounds` rounds of one per
method (full, LoKI, LoRA, full, ...), and each method's figure is the median over its rounds, so a
machine that slows or speeds up during the run moves every method alike (run one after another
once each, LoKI/full came out anywhere between 0.58 and 0.75 on the same machine). The last line is
one JSON object:
{"bench": "train_step", "loki_vs_full_time": ..., "loki_vs_full_memory": ..., "lora_vs_full_time": ...}.
Equivalence check in the same run: LoKI's trainable-parameter count must equal sum_l |S_l| * d_ff,
and after its steps every weight except the selected rows must be unchanged.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> dict:
    import torch

    from knowpack.methods import count_trainable, get_method
    from knowpack.methods.loki.method import LokiSettings
    from knowpack.methods.peft_methods import LoraSettings
    from knowpack.models import resolve_device, tiny_model

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = tiny_model("llama", seed=0, vocab_size=args.vocab, hidden_size=args.hidden, layers=args.layers,
                       intermediate_size=args.ffn, heads=args.heads, kv_heads=args.heads, max_positions=args.seq)
    model.to(device)
    base = {n: p.detach().clone() for n, p in model.named_parameters()} if args.method == "loki" else None
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, args.vocab, (args.batch, args.seq), generator=g).to(device)
    nodes = None
    if args.method == "loki":
        k = int(args.q / 100 * args.hidden)
        nodes = [sorted(torch.randperm(args.hidden, generator=g)[:k].tolist()) for _ in range(args.layers)]
    method = get_method(args.method)
    settings = {"lora": LoraSettings(r=args.lora_r, dropout=0.0), "loki": LokiSettings(q=args.q)}.get(
        method.settings_key)
    model = method.prepare(model, settings, nodes=nodes)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        mem0 = torch.cuda.memory_allocated() / 2**20
    else:
        mem0 = rss_mb()
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else peak_rss_mb()
    out = {"method": args.method, "step_s": statistics.median(times), "peak_mb_over_model": peak - mem0,
           "trainable": count_trainable(model)}
    if args.method == "loki":
        out["expected_trainable"] = sum(len(r) for r in nodes) * args.ffn
        merged = method.merge(model)
        ok = True
        for n, p in merged.named_parameters():
            if n.endswith("down_proj.weight"):
                layer = int(n.split("layers.")[1].split(".")[0])
                keep = torch.ones(p.shape[0], dtype=torch.bool)
                keep[nodes[layer]] = False
                ok &= torch.equal(p[keep].cpu(), base[n][keep].cpu())
            else:
                ok &= torch.equal(p.cpu(), base[n].cpu())
        out["only_selected_rows_changed"] = bool(ok)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=96)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--q", type=float, default=10)
    ap.add_argument("--lora-r", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="workers per method, interleaved; medians over them")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--method", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:
        print(json.dumps(worker(args)))
        return
    runs: dict[str, list[dict]] = {"full": [], "loki": [], "lora": []}
    passthrough = [a for a in sys.argv[1:]]
    for round_ in range(args.rounds):
        for method in runs:
            proc = subprocess.run([sys.executable, __file__, *passthrough, "--method", method], capture_output=True,
                                  text=True)
            if proc.returncode:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"{method} worker failed")
            runs[method].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = runs[method][-1]
            print(f"round {round_ + 1} {method:>5}: {r['step_s'] * 1000:8.1f} ms/step, peak "
                  f"+{r['peak_mb_over_model']:7.1f} MB, {r['trainable']:,} trainable parameters", flush=True)
    results = {}
    for method, rs in runs.items():
        results[method] = {**rs[-1], "step_s": statistics.median(r["step_s"] for r in rs),
                           "peak_mb_over_model": statistics.median(r["peak_mb_over_model"] for r in rs)}
        assert all(r["trainable"] == rs[0]["trainable"] for r in rs)
    for method, r in results.items():
        print(f"{method:>5}: {r['step_s'] * 1000:8.1f} ms/step, peak +{r['peak_mb_over_model']:7.1f} MB "
              f"(medians of {args.rounds} workers)")
    loki, full, lora = results["loki"], results["full"], results["lora"]
    assert loki["trainable"] == loki["expected_trainable"], "LoKI trainable count differs from sum |S_l| * d_ff"
    assert all(r["only_selected_rows_changed"] for r in runs["loki"]), "LoKI changed weights outside the selected rows"
    summary = {
        "bench": "train_step", "device": args.device,
        "model": {"hidden": args.hidden, "layers": args.layers, "ffn": args.ffn, "batch": args.batch, "seq": args.seq},
        "loki_vs_full_time": round(loki["step_s"] / full["step_s"], 3),
        "loki_vs_full_memory": round(loki["peak_mb_over_model"] / full["peak_mb_over_model"], 3),
        "lora_vs_full_time": round(lora["step_s"] / full["step_s"], 3),
        "lora_vs_full_memory": round(lora["peak_mb_over_model"] / full["peak_mb_over_model"], 3),
        "loki_trainable_exact": True, "loki_only_selected_rows_changed": True,
        "step_ms": {m: round(r["step_s"] * 1000, 1) for m, r in results.items()}, "rounds": args.rounds,
        "step_ms_per_round": {m: [round(r["step_s"] * 1000, 1) for r in rs] for m, rs in runs.items()},
        "peak_mb_over_model": {m: round(r["peak_mb_over_model"], 1) for m, r in results.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
