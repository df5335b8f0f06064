"""The knowpack command line: the only module that prints for humans.

    knowpack demo                                   the whole story on the embedded world
    knowpack world build --out DIR                  rebuild the synthetic world and its base model
    knowpack facts check FILE                       validate a fact file and summarise it
    knowpack probe --model M --facts F --out DIR    SliCK categories of every fact
    knowpack train CONFIG --out DIR                 probe -> compose -> train -> adapter
    knowpack attribute / select                     LoKI: KVA scores, then the rows to train
    knowpack merge --model M --adapter A --out DIR  fold an adapter into a plain HF model

User mistakes (KnowpackError) print one clear message and exit 2 without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from knowpack import __version__
from knowpack.errors import KnowpackError

OVERRIDES_HELP = "config overrides as key.sub=value (e.g. train.lr=1e-3 compose.n_unknown=10)"


def _out(text: str = "") -> None:
    """Print for humans; under `accelerate launch` only rank zero prints."""
    from knowpack.distributed import is_main

    if is_main():
        print(text, flush=True)


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars unless --no-progress or -q; only rank zero shows them."""
    from knowpack.distributed import is_main

    return not getattr(args, "no_progress", False) and not getattr(args, "quiet", False) and is_main()


def _add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, metavar="M",
                   help="local model directory or hub id ('world' = the embedded world's base model)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (auto: bfloat16 on a GPU that supports it, else float32)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own Python code to run (off by default)")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """The options `train` and `run` share, after their CONFIG argument."""
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--no-resume", action="store_true", help="start afresh: ignore the checkpoint, finished adapter "
                                                            "and metrics a previous attempt left in the run directory")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)


def _model_path(name: str) -> str:
    if name == "world":
        from knowpack.runs import world_dir

        return str(world_dir() / "model")
    return name


def _facts_path(name: str) -> str:
    if name == "world":
        from knowpack.runs import world_dir

        return str(world_dir() / "facts.jsonl")
    return name


# --- world ---------------------------------------------------------------------------------


def cmd_world_build(args: argparse.Namespace) -> int:
    from knowpack.world import build_world

    t0 = time.perf_counter()
    out = build_world(args.out, seed=args.seed, force=args.force)
    info = json.loads((Path(out) / "world.json").read_text())
    _out(f"built the world in {out} ({time.perf_counter() - t0:.0f} s)")
    _print_world_info(info)
    return 0


def _print_world_info(info: dict[str, Any]) -> None:
    ev = info.get("evaluation", {})
    for key in ("sizes", "model"):
        if key in info:
            _out(f"  {key}: " + ", ".join(f"{k}={v}" for k, v in info[key].items() if not isinstance(v, dict)))
    if ev:
        _out("  base model: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in ev.items() if not isinstance(v, (dict, list))))


def cmd_world_check(args: argparse.Namespace) -> int:
    from knowpack.runs import world_dir
    from knowpack.world.check import check_world

    items = list(args.overrides)
    if args.dir and "=" in args.dir and not Path(args.dir).exists():  # `world check train.lr=3e-3`: no directory
        items.insert(0, args.dir)
        args.dir = None
    d = Path(args.dir) if args.dir else world_dir()
    if not (d / "world.json").exists():
        raise KnowpackError(f"{d / 'world.json'} not found; build a world with `knowpack world build --out {d}`")
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise KnowpackError(f"override '{item}' is not key=value")
        overrides[key] = value
    _out(f"checking the world in {d}")
    props = check_world(d, probe_limit=args.probe_limit, known_sample=args.known_sample,
                        injection=not args.no_injection, injection_overrides=overrides, out_dir=args.out,
                        say=_out, write=not args.no_write)
    _out("")
    for name, p in props.items():
        if isinstance(p, dict) and "holds" in p:
            _out(f"  {name:<20} {'holds' if p['holds'] else 'NOT REACHED':<12} target: {p['target']}")
    _out(f"  measured in {props['measured_seconds']:.0f} s" + ("" if args.no_write else f"; written to {d / 'world.json'}"))
    return 0


def cmd_world_info(args: argparse.Namespace) -> int:
    from knowpack.runs import world_dir

    d = Path(args.dir) if args.dir else world_dir()
    path = d / "world.json"
    if not path.exists():
        raise KnowpackError(f"{path} not found; build a world with `knowpack world build --out {d}`")
    _out(f"world at {d}")
    _print_world_info(json.loads(path.read_text()))
    return 0


# --- facts ---------------------------------------------------------------------------------


def cmd_facts_check(args: argparse.Namespace) -> int:
    from knowpack.facts import format_summary, load_facts, summarize

    path = _facts_path(args.file)
    facts = load_facts(path, args.format, templates=args.templates, easyedit_answer=args.easyedit_answer)
    summary = summarize(facts)
    if args.json:
        _out(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        _out(f"{path}: OK")
        _out(format_summary(summary))
    return 0


# --- probe ---------------------------------------------------------------------------------


def cmd_probe(args: argparse.Namespace) -> int:
    from knowpack.config import load_config, save_config
    from knowpack.facts import load_facts
    from knowpack.io import write_json
    from knowpack.models import load_model
    from knowpack.probe.slick import CATEGORIES, ProbeSettings, write_probe
    from knowpack.runs import RunConfig, cached_probe

    overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
    settings = load_config(ProbeSettings, args.config, overrides)
    cfg = RunConfig(model=args.model, probe=settings, cache_dir=args.cache_dir)
    facts = load_facts(_facts_path(args.facts), args.format, easyedit_answer=args.easyedit_answer)
    probed = facts.sample(args.limit, settings.seed) if args.limit else facts
    out = Path(args.out)
    backend, model_id = None, None
    if args.backend == "vllm":
        from knowpack.probe import vllm_backend

        from knowpack.models import load_tokenizer

        vllm_backend.require_vllm()  # before anything else
        base = _model_path(args.model)
        served = Path(base) if args.adapter is None else out / "merged-model"
        # The key names the base and adapter, so a cached probe needs neither the merge nor the engine,
        # which start (merge first) only when something must be generated.
        backend = vllm_backend.VLLMBackend(
            served, load_tokenizer(base, trust_remote_code=args.trust_remote_code), dtype=args.dtype,
            seed=settings.seed, trust_remote_code=args.trust_remote_code,
            prepare=lambda: vllm_backend.served_model_dir(base, args.adapter, served, dtype=args.dtype,
                                                          trust_remote_code=args.trust_remote_code))
        model, tok = None, backend.tokenizer
        model_id = f"vllm:{vllm_backend.source_fingerprint(base, args.adapter)}"
    elif args.adapter:
        from knowpack.adapters import load_adapted

        model, tok, _ = load_adapted(_model_path(args.model), args.adapter, device=args.device, dtype=args.dtype,
                                     trust_remote_code=args.trust_remote_code)
    else:
        model, tok = load_model(_model_path(args.model), device=args.device, dtype=args.dtype,
                                trust_remote_code=args.trust_remote_code)
    t0 = time.perf_counter()
    rows, summary = cached_probe(cfg, model, tok, probed, exemplars=facts, progress=_progress(args),
                                 model_id=model_id, backend=backend)
    write_probe(out, rows, summary)
    save_config(settings, out / "probe_config.yaml")
    engine = {"backend": "hf"}
    if backend is not None:
        from knowpack.probe.vllm_backend import describe

        engine = describe(backend)
    write_json(out / "probe_meta.json", {"model": args.model, "adapter": args.adapter, "engine": engine,
                                         "backend": args.backend,
                                         "facts": args.facts, "limit": args.limit, "n_facts": len(probed),
                                         "seconds": round(time.perf_counter() - t0, 2)})
    counts = summary.get("counts", {})
    _out(f"probed {len(rows)} facts in {time.perf_counter() - t0:.1f} s -> {out / 'probe.jsonl'}")
    for c in CATEGORIES:
        n = counts.get(c, 0)
        _out(f"  {c:<12} {n:>6}  {n / max(1, len(rows)):6.1%}")
    return 0


# --- train / merge -------------------------------------------------------------------------


def _run_config(args: argparse.Namespace):
    from knowpack.config import load_config
    from knowpack.runs import RunConfig

    return load_config(RunConfig, args.config, args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from knowpack.runs import train_run

    cfg = _run_config(args)
    out = Path(args.out or f"runs/{Path(args.config).stem}")
    run = train_run(cfg, out, progress=_progress(args), resume=not args.no_resume)
    s = run.summary
    _out(f"trained {s['method']} on {s['n_examples']} examples ({s['n_unknown']} Unknown facts): "
         f"{s['steps']} steps, {s['trainable_params']:,} trainable parameters, {s['train_seconds']:.0f} s")
    if s["stopped_early"]:
        _out(f"  stopped early: {s['stopped_early']}")
    _out(f"  reliability (zero-shot, trained facts): {s['reliability_zero_shot']:.1%}")
    _out(f"  run directory: {out}   adapter: {out / 'adapter'}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from knowpack.adapters import merge_adapter

    out = merge_adapter(_model_path(args.model), args.adapter, args.out, dtype=args.dtype,
                        trust_remote_code=args.trust_remote_code)
    _out(f"merged model written to {out} (load it with AutoModelForCausalLM.from_pretrained)")
    return 0


def _headline_lines(metrics: dict[str, Any]) -> list[str]:
    h = metrics.get("headline", {})

    def pct(key: str) -> str:
        v = h.get(key)
        return "n/a" if v is None else f"{v:.1%}"

    lines = [f"  reliability (few-shot, mean P_greedy): {pct('reliability')}   zero-shot: "
             f"{pct('reliability_zero_shot')}   held-out paraphrases: {pct('generalisation_zero_shot')}",
             f"  knowledge shift on {h.get('n_eval')} untrained facts: +{pct('positive_shift')} / "
             f"-{pct('negative_shift')}   locality: {pct('locality')}"]
    drops = {k: v for k, v in (metrics.get("benchmarks") or {}).items() if isinstance(v, dict)}
    if drops:
        lines.append("  benchmarks: " + ", ".join(
            f"{k} {v.get('before', 0):.3f} -> {v.get('after', 0):.3f}" for k, v in drops.items()
            if v.get("before") is not None))
    rf = metrics.get("refusal_facts")
    if rf:
        lines.append(f"  refusals on refusal facts: {rf['before']:.1%} -> {rf['after']:.1%}")
    return lines


def cmd_run(args: argparse.Namespace) -> int:
    from knowpack.runs import full_run

    cfg = _run_config(args)
    out = Path(args.out or f"runs/{Path(args.config).stem}")
    t0 = time.perf_counter()
    metrics = full_run(cfg, out, progress=_progress(args), resume=not args.no_resume)
    _out(f"run finished in {time.perf_counter() - t0:.0f} s: {metrics['run']['method']} on "
         f"{metrics['run']['n_unknown']} Unknown facts")
    for line in _headline_lines(metrics):
        _out(line)
    _out(f"  metrics: {out / 'metrics.json'}   report: {out / 'report.md'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from knowpack.executors import from_arguments
    from knowpack.report import write_sweep_report
    from knowpack.sweep import run_sweep

    executor = from_arguments(args)
    out = Path(args.out or f"runs/{Path(args.config).stem}")
    t0 = time.perf_counter()

    def on_point(i: int, n: int, point: Any, state: str) -> None:
        if state == "done":
            _out(f"[{i}/{n}] {point.id}: already finished")
        else:
            elapsed = time.perf_counter() - t0
            _out(f"[{i}/{n}] {point.id}: running ({elapsed:.0f} s elapsed)")

    records = run_sweep(args.config, out, overrides=args.overrides, on_point=on_point, executor=executor)
    report = write_sweep_report(out)
    _out(f"sweep finished: {len(records)} runs in {time.perf_counter() - t0:.0f} s -> {out / 'results.jsonl'}")
    _out(f"  report: {report}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from knowpack.report import write_run_report, write_sweep_report

    d = Path(args.dir)
    if (d / "results.jsonl").exists():
        path = write_sweep_report(d)
    elif (d / "metrics.json").exists():
        path = write_run_report(d)
    else:
        raise KnowpackError(f"'{d}' holds neither results.jsonl (a sweep) nor metrics.json (a run); "
                            "run `knowpack run` or `knowpack sweep` first")
    _out(f"report written to {path}")
    return 0


def cmd_capacity(args: argparse.Namespace) -> int:
    from knowpack.capacity import Budget, capacity_search

    if args.max_benchmark_drop is None and not args.no_benchmark_budget:
        raise KnowpackError("give --max-benchmark-drop (each benchmark's relative drop, e.g. 0.01), or "
                            "--no-benchmark-budget to judge reliability and negative shift only")
    cfg = _run_config(args)
    out = Path(args.out or f"runs/capacity-{Path(args.config).stem}")
    budget = Budget(args.max_negative_shift, None if args.no_benchmark_budget else args.max_benchmark_drop,
                    args.min_reliability)

    def pct(x: Any) -> str:
        return "n/a" if x is None else f"{x:.1%}"

    def step(rec: dict[str, Any]) -> None:
        drops = ", ".join(f"{k} {pct(v)}" for k, v in rec["benchmark_drop_relative"].items())
        _out(f"  n={rec['n_unknown']}: {'pass' if rec['pass'] else 'fail'}  reliability {pct(rec['reliability'])}, "
             f"negative shift {pct(rec['negative_shift'])} (noise floor {pct(rec['negative_shift_floor'])})"
             + (f", drops: {drops}" if drops else "") + (f"  [{'; '.join(rec['reasons'])}]" if rec["reasons"] else ""))

    res = capacity_search(cfg, out, budget, start=args.start, max_n=args.max_n, on_step=step)
    _out(f"capacity of {res['method']}: {res['capacity']} facts within the budget (first failing size: "
         f"{res['first_failing']}; sizes tried: {', '.join(str(r['n_unknown']) for r in res['tried'])}; cap "
         f"{res['cap']}, set by the {res['capped_by']}); bits per trainable parameter: {res['bits_per_param']}")
    if not res["monotone"]:
        _out(f"  not monotone: {', '.join(map(str, res['passing_above_first_failure']))} pass although "
             f"{res['first_failing']} fails; the capacity is the largest passing size below that failure")
    _out(f"  details: {out / 'capacity.json'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from knowpack.compare import describe_lr_search, run_compare, table_markdown
    from knowpack.executors import from_arguments

    out = Path(args.out or f"runs/compare-{Path(args.config).stem}")
    t0 = time.perf_counter()
    table = run_compare(args.config, out, overrides=args.overrides, say=_out, executor=from_arguments(args))
    _out("")
    _out(table_markdown(table))
    if table["lr_search"]:
        _out("")
        _out("Learning rates chosen (validation: the retention facts, never the evaluation sample):")
        _out(describe_lr_search(table["lr_search"]))
    _out(f"\ncompared in {time.perf_counter() - t0:.0f} s -> {out / 'compare.md'}, {out / 'compare.json'}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from knowpack.ablate import run_ablation

    out = Path(args.out or f"runs/ablate-{Path(args.config).stem}")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    res = run_ablation(_run_config(args), out, q=args.q, strategies=strategies, known=args.known,
                       progress=_progress(args), say=_out)
    _out(res["table"])
    _out(f"\n{res['summary']}")
    _out(f"-> {out / 'ablation.json'}, {out / 'ablation.md'}")
    return 0


# --- LoKI: attribute / select --------------------------------------------------------------


def cmd_attribute(args: argparse.Namespace) -> int:
    from knowpack.distributed import is_main, world_size
    from knowpack.methods.loki.kva import attribute_across_processes, load_attribution_prompts, save_scores
    from knowpack.models import load_model

    model, tok = load_model(_model_path(args.model), device=args.device, dtype=args.dtype,
                            trust_remote_code=args.trust_remote_code)
    prompts_path = args.prompts
    if prompts_path == "world":
        from knowpack.runs import world_dir

        prompts_path = str(world_dir() / "benchmarks" / "mc.jsonl")
    ids, prompts = load_attribution_prompts(prompts_path, tok)
    if args.limit:
        ids, prompts = ids[:args.limit], prompts[:args.limit]
    t0 = time.perf_counter()
    # Under `accelerate launch` every process attributes every world-th prompt; rank zero writes all.
    scores = attribute_across_processes(model, tok, prompts, method=args.method, steps=args.steps,
                                        progress=_progress(args))
    if is_main():
        save_scores(args.out, scores, ids, {"method": args.method, "steps": args.steps, "model": args.model,
                                            "prompts": prompts_path})
    dt = time.perf_counter() - t0
    procs = f" on {world_size()} processes" if world_size() > 1 else ""
    _out(f"attributed {len(prompts)} prompts ({args.method}, {args.steps} steps){procs} in {dt:.1f} s "
         f"({dt / max(1, len(prompts)):.3f} s per prompt): scores {tuple(scores.shape)} -> {args.out}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from knowpack.methods.loki.kva import load_scores
    from knowpack.methods.loki.select import save_nodes, select_nodes

    scores, _, _ = load_scores(args.scores)
    layers = select_nodes(scores, args.q, args.strategy, seed=args.seed)
    save_nodes(args.out, layers, args.q, args.strategy)
    _out(f"selected {sum(map(len, layers))} rows over {len(layers)} layers ({args.strategy}, q={args.q}) "
         f"-> {args.out}")
    return 0


# --- demo ----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from knowpack.demo import run_demo

    return run_demo(Path(args.config), out=Path(args.out), printer=_out, progress=_progress(args))


# --- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from knowpack.facts import EASYEDIT_ANSWERS, FORMATS
    from knowpack.methods.loki.kva import METHODS as KVA_METHODS
    from knowpack.methods.loki.select import STRATEGIES

    FACT_FORMATS = ["auto", *FORMATS]
    parser = argparse.ArgumentParser(
        prog="knowpack",
        description="Pack new facts into a language model (LoRA, LoKI) and measure what was learned and "
                    "what was damaged. Start with `knowpack demo`.",
    )
    parser.add_argument("--version", action="version", version=f"knowpack {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="also show the libraries' info logs, warnings and progress bars (-vv: debug messages)")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only: no stages, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func, help: str, **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, **kw)
        p.set_defaults(func=func)
        return p

    p = add("demo", cmd_demo, "run the whole story on the embedded default world and print what it shows")
    p.add_argument("config", nargs="?", default="configs/demo.yaml", help="demo sweep config (default: "
                                                                        "configs/demo.yaml)")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    world = sub.add_parser("world", help="the embedded synthetic world", description="the embedded synthetic world")
    wsub = world.add_subparsers(dest="world_command", metavar="ACTION", required=True)
    p = wsub.add_parser("build", help="generate the world and pretrain its tiny base model (minutes on a CPU)",
                        description="Generate the synthetic world (people, 24 relations, popularity tiers, noisy facts, "
                                    "refusals, skill benchmarks) and pretrain its base model on CPU, reproducibly; "
                                    "about 30 minutes on 2 cores for the default world.")
    p.set_defaults(func=cmd_world_build)
    p.add_argument("--out", required=True, help="directory to write model/, facts.jsonl, benchmarks/, world.json")
    p.add_argument("--seed", type=int, default=0, help="world and pretraining seed (default 0)")
    p.add_argument("--force", action="store_true", help="overwrite an existing world in --out")
    p = wsub.add_parser("info", help="print what a world holds and how its base model does",
                        description="Print a world's sizes, its base model and the zero-shot figures recorded in its "
                                    "world.json (and the measured properties, once `knowpack world check` ran).")
    p.set_defaults(func=cmd_world_info)
    p.add_argument("dir", nargs="?", help="world directory (default: the shipped world)")
    check_help = ("measure whether a world behaves like a real LLM (categories, benchmarks, MLP profile, causal "
                  "trace, LoKI's premise, injection at matched reliability) and write the figures into its world.json")
    p = wsub.add_parser("check", help=check_help, description=check_help[0].upper() + check_help[1:] + ".")
    p.set_defaults(func=cmd_world_check)
    p.add_argument("dir", nargs="?", help="world directory (default: the shipped world)")
    p.add_argument("--probe-limit", type=int, help="probe a seeded sample of N facts (default: all)")
    p.add_argument("--known-sample", type=int, default=300, help="known facts scored in the ablations (default 300)")
    p.add_argument("--no-injection", action="store_true", help="skip the LoRA injection run (the slow part)")
    p.add_argument("--out", help="directory for the injection run (default: DIR/.check)")
    p.add_argument("--no-write", action="store_true", help="print the figures without updating world.json")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides of the injection run, e.g. train.lr=3e-3 train.epochs=200")

    facts = sub.add_parser("facts", help="fact files", description="fact files")
    fsub = facts.add_subparsers(dest="facts_command", metavar="ACTION", required=True)
    p = fsub.add_parser("check", help="validate a fact file and print a summary (exit 2 with file/line/field "
                                      "on bad input)")
    p.set_defaults(func=cmd_facts_check)
    p.add_argument("file", help="fact file: native JSONL, Head-to-Tail, ZsRE, CounterFact, EasyEdit/KnowEdit, "
                                "PopQA/EntityQuestions, Parquet, HF dir")
    p.add_argument("--format", default="auto", choices=FACT_FORMATS, help="input format (default: detect)")
    p.add_argument("--templates", help="relation template YAML for triples without questions")
    p.add_argument("--easyedit-answer", default=EASYEDIT_ANSWERS[0], choices=EASYEDIT_ANSWERS,
                   help="EasyEdit/KnowEdit records: the answer trained on (default: target_new, the edit)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = add("probe", cmd_probe, "probe what a model knows: SliCK category of every fact",
            epilog="Writes DIR/probe.jsonl (one row per fact) and DIR/summary.json. Settings: n_prompts=10 "
                   "shots=4 n_samples=16 temperature=0.5 top_k=40 max_new_tokens=32 match=contains|exact.")
    _add_model_args(p)
    p.add_argument("--facts", required=True, help="fact file ('world' = the embedded world's facts)")
    p.add_argument("--format", default="auto", choices=FACT_FORMATS, help="fact file format (default: detect)")
    p.add_argument("--easyedit-answer", default=EASYEDIT_ANSWERS[0], choices=EASYEDIT_ANSWERS,
                   help="EasyEdit/KnowEdit records: the answer trained on (default: target_new, the edit)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--adapter", help="probe the model with this adapter (RUN/adapter) applied; with --backend "
                                     "vllm it is merged first into OUT/merged-model")
    p.add_argument("--backend", default="hf", choices=["hf", "vllm"],
                   help="generation backend: hf (built-in batched engine, default) or vllm (pip install "
                        "knowpack[vllm]; serves a plain or merged model)")
    p.add_argument("--limit", type=int, help="probe a seeded random sample of N facts (not the first N)")
    p.add_argument("--seed", type=int, help="probe seed (exemplars, sampling, --limit sample)")
    p.add_argument("--config", help="YAML file with probe settings")
    p.add_argument("--cache-dir", help="probe cache (default $KNOWPACK_CACHE or ~/.cache/knowpack)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="probe settings, e.g. n_samples=0")

    p = add("train", cmd_train, "probe, compose the training set, and train an adapter (LoRA family, full, LoKI)")
    p.add_argument("config", help="run config YAML (see configs/lora-world.yaml)")
    _add_run_args(p)

    p = add("run", cmd_run, "one whole run: probe, compose, [attribute + select], train, evaluate, report",
            epilog="Writes config.yaml, env.json, probe_before/after.jsonl, train.jsonl, adapter/, metrics.json, "
                   "report.md and plots into the run directory.")
    p.add_argument("config", help="run config YAML (see configs/)")
    _add_run_args(p)

    p = add("sweep", cmd_sweep, "run a grid of runs (the config's `grid:`), resumable; then write the report",
            epilog="One line per finished run is appended to OUT/results.jsonl; rerun the same command to resume.")
    p.add_argument("config", help="sweep config YAML: a run config plus `grid:` (see configs/paper-grid.yaml)")
    p.add_argument("--out", help="sweep directory (default: runs/<config name>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    from knowpack.executors import add_arguments as add_executor_arguments

    add_executor_arguments(p)

    p = add("report", cmd_report, "write report.md and plots for a run or sweep directory")
    p.add_argument("dir", help="a run directory (metrics.json) or a sweep directory (results.jsonl)")

    p = add("capacity", cmd_capacity, "find the largest number of facts a method packs within a damage budget")
    p.add_argument("config", help="run config YAML; compose.n_unknown is searched")
    p.add_argument("--max-negative-shift", type=float, required=True, help="e.g. 0.01 for 1%% of untrained facts")
    p.add_argument("--max-benchmark-drop", type=float,
                   help="largest relative drop allowed on each benchmark, e.g. 0.01 (the mean is reported too)")
    p.add_argument("--no-benchmark-budget", action="store_true",
                   help="judge reliability and negative shift only (say so explicitly: an unmeasured benchmark "
                        "is otherwise an error)")
    p.add_argument("--min-reliability", type=float, default=0.95, help="default 0.95")
    p.add_argument("--start", type=int, default=10, help="first size tried (doubling from there)")
    p.add_argument("--max-n", type=int, help="largest size to try (also capped at the number of Unknown facts)")
    p.add_argument("--out", help="directory (default: runs/capacity-<config name>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)

    p = add("compare", cmd_compare, "compare methods fairly: each trained to one reliability target at a learning "
                                    "rate the tool chose for it, beside parameter-matched and row controls")
    p.add_argument("config", help="compare config YAML: a sweep config plus a `compare:` section "
                                  "(see configs/compare-world.yaml)")
    p.add_argument("--out", help="directory (default: runs/compare-<config name>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    from knowpack.executors import add_arguments as add_executor_arguments

    add_executor_arguments(p)

    p = add("ablate", cmd_ablate, "zero the down_proj rows a selection strategy picks (no training) and measure "
                                  "every benchmark and the known facts against the base model (LoKI's premise)")
    p.add_argument("config", help="run config YAML: model, facts, eval benchmarks and train.loki attribution data")
    p.add_argument("--q", type=float, default=1.0, help="percent of rows zeroed per layer (default 1)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated, from: {', '.join(STRATEGIES)}")
    p.add_argument("--known", type=int, default=300, help="HighlyKnown facts scored zero-shot (default 300)")
    p.add_argument("--out", help="directory (default: runs/ablate-<config name>)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)

    p = add("merge", cmd_merge, "fold an adapter (PEFT, LoKI or full) into a plain Hugging Face model")
    p.add_argument("--model", required=True, help="the base model the adapter was trained on")
    p.add_argument("--adapter", required=True, help="adapter directory (RUN/adapter)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code to run")

    p = add("attribute", cmd_attribute, "LoKI: knowledge-vector attribution (integrated gradients) of every "
                                        "down_proj row on general-knowledge prompts")
    _add_model_args(p)
    p.add_argument("--prompts", required=True, help="JSONL of {id, prompt} or MMLU rows {question, choices, "
                                                    "answer, subject} ('world' = the world's MC benchmark)")
    p.add_argument("--out", required=True, help="scores file (.safetensors, tensor 'scores' [N, L, D])")
    p.add_argument("--method", default="fast", choices=list(KVA_METHODS), help="fast (default) or reference")
    p.add_argument("--steps", type=int, default=7, help="Riemann steps m (default 7)")
    p.add_argument("--limit", type=int, help="attribute only the first N prompts")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    p = add("select", cmd_select, "LoKI: choose the rows to train from KVA scores")
    p.add_argument("--scores", required=True, help="scores file from `knowpack attribute`")
    p.add_argument("--q", type=float, default=10.0, help="percent of rows per layer (default 10)")
    p.add_argument("--strategy", default="layer_balanced_lowest", choices=list(STRATEGIES))
    p.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    p.add_argument("--out", required=True, help="nodes.json to write")
    return parser


def configure_console(verbose: int, quiet: bool) -> None:
    """What the console shows: knowpack's stages and results; other libraries' logs, warnings and progress
    bars only with -v (INFO) or -vv (DEBUG); with -q, errors only. Under `accelerate launch` only rank zero
    logs progress; the others report errors."""
    import warnings

    from knowpack.distributed import is_main, rank, world_size

    quiet = quiet or not is_main()
    own = logging.ERROR if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    libraries = logging.ERROR if quiet else logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=libraries, format="%(message)s" if world_size() == 1 else f"[rank {rank()}] %(message)s",
                        force=True)
    logging.getLogger("knowpack").setLevel(own)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(libraries if verbose else logging.ERROR)
        if not verbose:
            hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars of every load
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    if not verbose:
        for name in ("lm_eval", "datasets", "peft", "accelerate", "httpx", "urllib3", "filelock", "submitit"):
            logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.WARNING)
        # deprecation notices and advice meant for the libraries' own authors or for other workflows
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(peft|transformers|torch|accelerate)\b.*")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may come after options (`run CONFIG --out DIR lr=1`), which argparse
    # cannot split by itself; anything else unknown is still an error.
    if extra:
        if hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from knowpack.distributed import rank, world_size

    configure_console(args.verbose, args.quiet)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # `knowpack facts check FILE | head`: the reader left; end quietly, as Unix tools do
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KnowpackError as exc:
        who = f" (rank {rank()})" if world_size() > 1 else ""
        print(f"knowpack: error{who}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("knowpack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
