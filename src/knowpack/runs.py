"""Runs: one config, one directory, every stage's output written atomically and reusable.

A run directory holds the resolved config (`config.yaml`), the environment (`env.json`: versions,
seed, git hash), the base model's probe (`probe_before.jsonl`), the composed training set
(`train.jsonl`, `composition.json`), LoKI's selected rows (`nodes.json`), the adapter
(`adapter/`), the training log and summary. Probes and KVA scores are cached per model, data and
settings under the cache directory, so repeated runs and sweeps reuse them.

The name `world` for `model`, `facts` or `train.loki.attribution_data` means the embedded default
world that ships with knowpack.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from knowpack import __version__, distributed
from knowpack.compose import ComposeSettings, Composition, compose
from knowpack.config import config_hash, save_config, to_dict
from knowpack.errors import KnowpackError
from knowpack.evaluate.stage import EvalSettings
from knowpack.facts import EASYEDIT_ANSWERS, FORMATS, FactSet
from knowpack.io import write_json, write_jsonl
from knowpack.probe.slick import (ProbeSettings, answer_zero_shot, load_probe_cache, model_fingerprint,
                                  probe_facts, save_probe_cache, summarize_probe)
from knowpack.probe.match import is_correct
from knowpack.train import TrainResult, TrainSettings, train

log = logging.getLogger(__name__)

WORLD = "world"


@dataclass
class RunConfig:
    model: str = field(default=WORLD, metadata={"help": "local model directory, hub id, or 'world'"})
    facts: str = field(default=WORLD, metadata={"help": "fact file (any supported format) or 'world'"})
    facts_format: str = field(default="auto", metadata={"choices": ("auto", *FORMATS),
                                                        "help": "fact file format; auto detects it"})
    facts_easyedit_answer: str = field(default=EASYEDIT_ANSWERS[0], metadata={
        "choices": EASYEDIT_ANSWERS,
        "help": "EasyEdit/KnowEdit facts: train on the edit (target_new) or on the true answer (ground_truth)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, mps"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    seed: int = field(default=0, metadata={"help": "sets compose.seed and train.seed"})
    probe_limit: int | None = field(default=None, metadata={"min": 1, "help": "probe a seeded sample of N facts"})
    cache_dir: str | None = field(default=None, metadata={"help": "probe/KVA cache; default $KNOWPACK_CACHE "
                                                                  "or ~/.cache/knowpack"})
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    compose: ComposeSettings = field(default_factory=ComposeSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def resolved(self) -> "RunConfig":
        """The config with the run seed copied into the stages it drives."""
        return replace(self, compose=replace(self.compose, seed=self.seed), train=replace(self.train, seed=self.seed))


# --- resolving names -------------------------------------------------------------------------


def world_dir() -> Path:
    """The embedded world: shipped inside the package, or else built once into the cache.

    Building runs `knowpack world build` with seed 0 (minutes on a CPU) the first time a checkout
    without the shipped world asks for it; later calls reuse the built copy.
    """
    from knowpack.world import build_world, default_world_dir

    shipped = default_world_dir()
    if (shipped / "world.json").exists():
        return shipped
    built = Path(os.environ.get("KNOWPACK_CACHE", "~/.cache/knowpack")).expanduser() / "world"
    if not (built / "world.json").exists():
        log.warning("the embedded world is not shipped in this installation; building it once into %s "
                    "(a few minutes on a CPU; `knowpack world build --out DIR` does the same)", built)
        build_world(built, seed=0, force=built.exists())
    return built


def model_path(cfg: RunConfig) -> str:
    return str(world_dir() / "model") if cfg.model == WORLD else cfg.model


def facts_path(cfg: RunConfig) -> str:
    return str(world_dir() / "facts.jsonl") if cfg.facts == WORLD else cfg.facts


def attribution_path(path: str) -> str:
    """KVA's data: `world` is the embedded world's attribution prompts (questions its base model answers,
    none of them a scored benchmark item)."""
    return str(world_dir() / "attribution.jsonl") if path == WORLD else path


def cache_root(cfg: RunConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("KNOWPACK_CACHE", "~/.cache/knowpack")).expanduser()


def git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(cfg: RunConfig) -> dict[str, Any]:
    import torch
    import transformers

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:  # pragma: no cover - peft is a dependency
        peft_version = None
    return {"knowpack": __version__, "git": git_hash(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft_version,
            "platform": platform.platform(), "seed": cfg.seed, "config_hash": config_hash(cfg)}


# --- stages ----------------------------------------------------------------------------------


def load_run_facts(cfg: RunConfig) -> FactSet:
    from knowpack.facts.loaders import load_facts

    return load_facts(facts_path(cfg), cfg.facts_format, easyedit_answer=cfg.facts_easyedit_answer)


def probe_facts_of(cfg: RunConfig, facts: FactSet) -> FactSet:
    return facts.sample(cfg.probe_limit, cfg.probe.seed) if cfg.probe_limit else facts


def shipped_probe_caches() -> list[Path]:
    """Read-only probe caches shipped with the embedded world (its base model's default probe).

    An entry is used only when its key matches exactly: the same weights, facts, exemplars and
    settings, so it is what probing would compute, read instead of recomputed.
    """
    from knowpack.world import default_world_dir

    # Only the shipped world is looked at: asking `world_dir()` here would build a world.
    path = default_world_dir() / "cache" / "probe"
    return [path] if path.is_dir() else []


def cached_probe(cfg: RunConfig, model: Any, tok: Any, facts: FactSet, *, exemplars: FactSet | None = None,
                 progress: bool = True, model_id: str | None = None,
                 backend: Any = None) -> tuple[list[dict], dict]:
    """Probe `facts` with `cfg.probe`, reading and filling the cache (keyed by weights, facts, settings).

    `backend` (a GenerationBackend, e.g. vLLM) answers instead of the built-in engine on `model`;
    then `model_id` must name what it serves, and `model` may be None.
    """
    model_id = model_id or model_fingerprint(model)
    facts_id = facts.fingerprint() + (f"+ex:{exemplars.fingerprint()}" if exemplars is not None else "")
    cache = cache_root(cfg) / "probe"
    for where in (cache, *shipped_probe_caches()):
        hit = load_probe_cache(where, model_id, facts_id, cfg.probe)
        if hit is not None:
            log.info("probe: reusing the cached result for %d facts (%s)", len(facts), where)
            return hit
    rows = probe_facts(model, tok, facts, cfg.probe, progress=progress, exemplars=exemplars, backend=backend)
    summary = summarize_probe(rows, cfg.probe)
    save_probe_cache(cache, model_id, facts_id, cfg.probe, rows, summary)
    return rows, summary


def zero_shot_accuracy(model: Any, tok: Any, facts: FactSet, ids: list[str], probe: ProbeSettings) -> float:
    """Share of `ids` whose zero-shot greedy answer is correct: it matches an alias (`probe.match`) and is
    not a refusal (`probe.refusal_patterns`), the rule metrics.json's zero-shot reliability uses."""
    if not ids:
        return 0.0
    answers = answer_zero_shot(model, tok, [facts[i].question for i in ids])
    return sum(is_correct(a, facts[i].answers, probe.match, probe.refusal_patterns)
               for a, i in zip(answers, ids)) / len(ids)


def control_probe_settings(probe: ProbeSettings) -> ProbeSettings:
    """The noise-floor control's probe: the same prompts, the sampled answers from another seed."""
    return replace(probe, sample_seed=(probe.seed if probe.sample_seed is None else probe.sample_seed) + 1)


def attribution_scores(cfg: RunConfig, model: Any, tok: Any, progress: bool = True):
    """KVA scores [N, L, D] for `train.loki`: read from `scores`, or attributed on `attribution_data`
    (cached per model, prompts and steps)."""
    from knowpack.methods.loki import kva

    s = cfg.train.loki
    if s.scores:
        return kva.load_scores(s.scores)[0]
    data = attribution_path(s.attribution_data)
    ids, prompts = kva.load_attribution_prompts(data, tok)
    if s.attribution_limit and s.attribution_limit < len(prompts):
        import random

        keep = sorted(random.Random(s.seed).sample(range(len(prompts)), s.attribution_limit))
        ids, prompts = [ids[i] for i in keep], [prompts[i] for i in keep]
    key = config_hash({"model": model_fingerprint(model), "prompts": prompts, "steps": s.steps})
    path = cache_root(cfg) / "kva" / f"{key}.safetensors"
    cpu = next(model.parameters()).device.type == "cpu"
    # every process must take the same branch: a miss means a collective attribution
    if distributed.all_agree(path.exists(), cpu):
        log.info("KVA: reusing cached scores %s", path)
        return kva.load_scores(path)[0]
    scores = kva.attribute_across_processes(model, tok, prompts, method=s.kva_method, steps=s.steps,
                                            progress=progress)
    if distributed.is_main():
        kva.save_scores(path, scores, ids, {"steps": s.steps, "method": s.kva_method, "data": data,
                                            "model": model_path(cfg)})
    return scores


def select_nodes_for(cfg: RunConfig, model: Any, tok: Any, out_dir: Path, progress: bool = True) -> list[list[int]]:
    """LoKI's rows: read `train.loki.nodes`, or select from cached (or fresh) KVA scores."""
    from knowpack.methods import get_method
    from knowpack.methods.loki.select import load_nodes, save_nodes, select_nodes

    s = cfg.train.loki
    if s.nodes:
        nodes = load_nodes(s.nodes)["layers"]
        write_json(out_dir / "nodes.json", load_nodes(s.nodes))
        return nodes
    q = get_method(cfg.train.method).q(s)
    nodes = select_nodes(attribution_scores(cfg, model, tok, progress), q, s.strategy, seed=s.seed)
    save_nodes(out_dir / "nodes.json", nodes, q, s.strategy)
    return nodes


def check_method_fits(cfg: RunConfig, model: Any) -> None:
    """What can be checked about the method against the model before a run writes anything.

    LoKI needs a supported decoder layout and at least one row per layer at its q (k = 0 on a
    small model); the LoRA family needs its target modules.
    """
    from knowpack.methods import get_method

    method = get_method(cfg.train.method)
    if cfg.train.method in ("loki", "loki_lora"):
        from knowpack.methods.loki.arch import decoder_layers, hidden_size
        from knowpack.methods.loki.select import _rows, rows_per_layer

        q = method.q(cfg.train.loki)
        if cfg.train.loki.strategy.startswith("global"):
            n_layers, hidden = len(decoder_layers(model)), hidden_size(model)
            _rows(q, n_layers * hidden, f"{n_layers} layers x hidden size {hidden}")
        else:
            rows_per_layer(q, hidden_size(model))
    elif method.settings_key == "lora":
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in cfg.train.lora.targets if t not in present]
        if missing:
            raise KnowpackError(f"train.lora.targets: {', '.join(missing)} not found in the model "
                                f"({getattr(model.config, 'model_type', type(model).__name__)}); set "
                                "train.lora.targets to module names it has")


@dataclass
class TrainedRun:
    out_dir: Path
    cfg: RunConfig
    facts: FactSet
    probe_rows: list[dict]
    composition: Composition
    result: TrainResult
    tokenizer: Any
    summary: dict[str, Any]
    base_model_id: str = ""
    pre_train: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""  # config, base model and training data; names what this run's outputs belong to


PreTrainHook = Any  # Callable[[model, tokenizer, model_id, facts, composition], dict]


def train_run(cfg: RunConfig, out_dir: str | Path, *, progress: bool = True, resume: bool = True,
              pre_train_hook: PreTrainHook | None = None) -> TrainedRun:
    """probe (cached) → compose → [attribute + select for LoKI] → train → adapter, in `out_dir`."""
    from knowpack.models import load_model, set_seed

    cfg = cfg.resolved()
    out = Path(out_dir)
    set_seed(cfg.seed)
    # Inputs and the model are read and checked before anything is written, so bad input leaves
    # no run directory behind.
    facts = load_run_facts(cfg)
    t0 = time.perf_counter()
    model, tok = load_model(model_path(cfg), device=cfg.device, dtype=cfg.dtype,
                            trust_remote_code=cfg.trust_remote_code)
    check_method_fits(cfg, model)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    write_json(out / "env.json", environment(cfg))
    base_id = model_fingerprint(model)
    probed = probe_facts_of(cfg, facts)
    rows, summary = cached_probe(cfg, model, tok, probed, exemplars=facts, progress=progress, model_id=base_id)
    write_jsonl(out / "probe_before.jsonl", rows)
    write_json(out / "probe_before_summary.json", summary)
    t_probe = time.perf_counter() - t0

    comp = compose(facts, rows, cfg.compose, tok)
    write_jsonl(out / "train.jsonl", comp.rows)
    write_json(out / "composition.json", {"unknown": comp.unknown_ids, "eval": comp.eval_ids,
                                          "retention": comp.retention_ids, "mixed": comp.mixed_ids,
                                          "summary": comp.summary()})
    context: dict[str, Any] = {}
    if cfg.train.method in ("loki", "loki_lora"):
        context["nodes"] = select_nodes_for(cfg, model, tok, out, progress=progress)

    retention_start = zero_shot_accuracy(model, tok, facts, comp.retention_ids, cfg.probe) \
        if cfg.train.early_stopping.enabled else None

    def hook(m: Any) -> dict[str, float]:
        return {"reliability": zero_shot_accuracy(m, tok, facts, comp.unknown_ids, cfg.probe),
                "retention": zero_shot_accuracy(m, tok, facts, comp.retention_ids, cfg.probe),
                "retention_start": retention_start}

    pre_train = pre_train_hook(model, tok, base_id, facts, comp) if pre_train_hook else {}
    t1 = time.perf_counter()
    # Where the caches live and how often checkpoints are written change no result, so changing them
    # keeps checkpoints and metrics valid.
    settings = to_dict(cfg)
    settings["train"] = {k: v for k, v in settings["train"].items() if k not in ("checkpoint_every", "checkpoint_seconds")}
    fingerprint = config_hash({"cfg": {**settings, "cache_dir": None}, "base": base_id, "train": comp.rows})
    result = train(model, tok, comp.rows, cfg.train, out, base_model=model_path(cfg), method_context=context,
                   eval_hook=hook, fingerprint=fingerprint, resume=resume, progress=progress)
    reliability = zero_shot_accuracy(result.model, tok, facts, comp.unknown_ids, cfg.probe)
    train_summary = {
        "method": cfg.train.method, "trainable_params": result.trainable_params, "steps": result.steps,
        "epochs": result.epochs, "stopped_early": result.stopped_early, "train_seconds": round(result.seconds, 2),
        "probe_seconds": round(t_probe, 2), "total_seconds": round(time.perf_counter() - t0, 2),
        "n_examples": len(comp.rows), "n_unknown": len(comp.unknown_ids),
        "reliability_zero_shot": reliability,
        "reliability_definition": "share of trained Unknown facts whose zero-shot greedy answer to the training "
                                  f"prompt matches an alias ({cfg.probe.match}) and is not a refusal; "
                                  "denominator = n_unknown (the same rule as metrics.json)",
        "probe_before": {k: summary.get(k) for k in ("counts", "shares") if k in summary},
        "seconds_train_stage": round(time.perf_counter() - t1, 2),
    }
    write_json(out / "train_summary.json", train_summary)
    return TrainedRun(out, cfg, facts, rows, comp, result, tok, train_summary, base_id, pre_train, fingerprint)


# --- the whole run ---------------------------------------------------------------------------


def answer_space(cfg: RunConfig) -> dict[str, int] | None:
    """Answer-pool size per relation, where the facts come with one (the embedded world)."""
    if cfg.facts != WORLD:
        return None
    from knowpack.io import read_json

    info = read_json(world_dir() / "world.json")
    pools = info.get("sizes", {}).get("answer_pools")
    return {str(k): int(v) for k, v in pools.items()} if pools else None


def full_run(cfg: RunConfig, out_dir: str | Path, *, progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """probe → compose → [select] → train → evaluate → report; returns the metrics record."""
    from knowpack.evaluate import stage
    from knowpack.evaluate.metrics import compute_metrics
    from knowpack.report import write_run_report

    out = Path(out_dir)
    metrics_path = out / "metrics.json"
    cfg = cfg.resolved()
    if cfg.eval.harness:  # say so before the probe and training, not after them
        from knowpack.evaluate.harness import require_lm_eval

        require_lm_eval()
    bench = stage.resolve_benchmarks(cfg.eval, cfg.model, world_dir() if cfg.model == WORLD else None)

    def before(model: Any, tok: Any, model_id: str, facts: FactSet, comp: Composition) -> dict[str, Any]:
        """On the base model, before training: its benchmark scores and the noise-floor control probe."""
        scores = stage.cached_benchmarks(model, tok, bench, cfg.eval, model_id, cache_root(cfg),
                                         refusal_patterns=cfg.probe.refusal_patterns)
        control = None
        if cfg.eval.noise_floor and comp.eval_ids:
            control, _ = cached_probe(replace(cfg, probe=control_probe_settings(cfg.probe)), model, tok,
                                      facts.subset(comp.eval_ids), exemplars=facts, progress=progress,
                                      model_id=model_id)
        return {"benchmarks": scores, "control_rows": control}

    t0 = time.perf_counter()
    run = train_run(cfg, out, progress=progress, resume=resume, pre_train_hook=before)
    if resume:
        done = finished_metrics(metrics_path, run.fingerprint)
        if done is not None:  # killed after metrics.json (e.g. before the sweep recorded it): no re-evaluation
            log.info("%s is complete for this run; writing the report only", metrics_path)
            write_run_report(out)
            return done
    model, tok, facts, comp = for_inference(run.result.model), run.tokenizer, run.facts, run.composition
    t1 = time.perf_counter()
    trained, eval_ids = comp.unknown_ids, comp.eval_ids
    after_rows = stage.probe_after(model, tok, facts, trained + eval_ids, cfg.probe, progress=progress)
    write_jsonl(out / "probe_after.jsonl", after_rows)
    zero_shot = answer_zero_shot(model, tok, [facts[i].question for i in trained], batch_size=cfg.eval.batch_size)
    para = para_fewshot = None
    if cfg.eval.paraphrases:
        para = stage.paraphrase_answers(model, tok, facts, trained, cfg.compose.held_out_share, cfg.compose.seed,
                                        cfg.eval.batch_size)
        para_fewshot = stage.paraphrase_fewshot_answers(model, tok, facts, trained, cfg.compose.held_out_share,
                                                        cfg.compose.seed, cfg.probe)
    bench_after = stage.score_benchmarks(model, tok, bench, cfg.eval, refusal_patterns=cfg.probe.refusal_patterns)
    before_scores, refusal_before = stage.split_refusal(run.pre_train["benchmarks"])
    after_scores, refusal_after = stage.split_refusal(bench_after)
    before_by_id = {r["id"]: r for r in run.probe_rows}
    metrics = compute_metrics(
        facts, [before_by_id[i] for i in trained + eval_ids], after_rows, trained, eval_ids,
        zero_shot_answers=zero_shot, paraphrase_answers=para or None,
        paraphrase_fewshot_answers=para_fewshot or None, benchmarks_before=before_scores,
        benchmarks_after=after_scores, trainable_params=run.result.trainable_params,
        answer_space_size=answer_space(cfg), match=cfg.probe.match,
        refusal_patterns=cfg.probe.refusal_patterns, exploded_share=cfg.eval.exploded_share,
        control_rows=run.pre_train.get("control_rows"))
    if refusal_before is not None and refusal_after is not None:
        from knowpack.evaluate import stats

        paired = "refused" in refusal_before and "refused" in refusal_after
        diff = stats.paired_difference(refusal_before["refused"], refusal_after["refused"]) if paired else {}
        metrics["refusal_facts"] = {"before": refusal_before["rate"], "after": refusal_after["rate"],
                                    "change": refusal_after["rate"] - refusal_before["rate"],
                                    "before_ci95": stats.wilson(round(refusal_before["rate"] * refusal_before["n"]),
                                                                refusal_before["n"])["ci95"],
                                    "after_ci95": stats.wilson(round(refusal_after["rate"] * refusal_after["n"]),
                                                               refusal_after["n"])["ci95"],
                                    "change_ci95": diff.get("ci95"), "mcnemar_p": diff.get("mcnemar_p"),
                                    "ci_method": "Wilson over the refusal questions; change: " +
                                                 diff.get("method", "not paired (no per-question outcomes)"),
                                    "denominator": refusal_before["n"],
                                    "definition": refusal_before["definition"]}
        metrics["headline"]["refusal_facts_before"] = refusal_before["rate"]
        metrics["headline"]["refusal_facts_after"] = refusal_after["rate"]
        metrics["headline"]["ci95"]["refusal_facts_after"] = metrics["refusal_facts"]["after_ci95"]
    metrics["run"] = {"method": cfg.train.method, "n_unknown": len(trained), "mixing": cfg.compose.mixing,
                      "k": cfg.compose.k, "seed": cfg.seed, "trainable_params": run.result.trainable_params,
                      "steps": run.result.steps, "stopped_early": run.result.stopped_early,
                      "fingerprint": run.fingerprint}
    # Wall-clock times live in timings.json, so the same config and seed give a byte-identical metrics.json.
    write_json(metrics_path, metrics)
    write_json(out / "timings.json", {"probe_and_train": round(t1 - t0, 2),
                                      "evaluate": round(time.perf_counter() - t1, 2)})
    write_run_report(out)
    return metrics


def for_inference(model: Any) -> Any:
    """The trained model as evaluation should run it: a float32 LoRA-family adapter folded into its
    layers (the same function up to float rounding, without PEFT's per-layer overhead, which was
    about a third of the evaluation time on the world). In lower precision merging would round small
    updates away, so there, and for other methods, the model is returned as it is."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return model
    import torch

    if isinstance(model, PeftModel) and all(p.dtype == torch.float32 for p in model.parameters()):
        return model.merge_and_unload()
    return model


def finished_metrics(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The metrics in `path` if they were written for this fingerprint (the same run), else None."""
    from knowpack.io import read_json

    try:
        metrics = read_json(path)
    except (OSError, ValueError):
        return None
    ok = fingerprint and isinstance(metrics, dict) and (metrics.get("run") or {}).get("fingerprint") == fingerprint
    return metrics if ok else None


def full_run_record(cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """One sweep line: the resolved config, the run's metrics and its timings."""
    from knowpack.io import read_json

    metrics = full_run(cfg, out_dir, progress=False)
    timings_path = Path(out_dir) / "timings.json"
    timings = read_json(timings_path) if timings_path.exists() else None
    return {"config": to_dict(cfg.resolved()), "metrics": metrics, "run_dir": str(out_dir), "timings": timings}
