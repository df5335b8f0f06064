"""Build the embedded default world into a directory: facts, benchmarks, base model, world.json.

    from knowpack.world import build_world, default_world_dir
    build_world("/tmp/world", seed=0)          # about 6 minutes on 2 CPU cores (337 s measured)
    build_world(default_world_dir(), force=True)  # what `make world` does

Layout of the directory (the contract downstream code relies on):

    model/                     LlamaForCausalLM + tokenizer, plain Hugging Face format, safetensors
    facts.jsonl                the probe facts (native fact format, meta: bucket, tier, noise)
    refusal.jsonl              questions whose pretraining answer is "I don't know"
    benchmarks/mc.jsonl        4-choice questions over held-out known facts (question, choices, answer, subject)
    benchmarks/arithmetic.jsonl  small-number addition, pairs held out of pretraining (question, answers)
    templates.yaml             relation -> question templates (canonical first)
    world.json                 sizes, settings, seed, model size, build time, zero-shot accuracies
    cache/probe/               (shipped world only) the base model's probe results; kept on a rebuild,
                               read only when their key (weights, facts, settings) matches
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from knowpack.errors import KnowpackError
from knowpack.evaluate.mc import score_mc
from knowpack.io import write_json, write_jsonl, write_text
from knowpack.models import DTYPES, output_cache, save_tokenizer, with_cache
from knowpack.world.corpus import epoch_documents
from knowpack.world.generate import (MC_CHOICES, RELATIONS, World, WorldConfig, bucket_of, generate_world,
                                     normalize, syllables)
from knowpack.world.pretrain import PretrainConfig, deterministic_cpu, pretrain, tokenizer_texts, train_tokenizer

log = logging.getLogger(__name__)

WORLD_FORMAT = 2
#: The benchmarks a world ships (benchmarks/<name>.jsonl, what `eval.mc`/`eval.qa: auto` score): the skills
#: its base model has. The generator also makes comparison ("Which is larger, a or b?") and reading
#: (answer from facts stated in the question) items, trained in pretraining; the default world's model
#: stays at chance on them (comparison 0.49 with two choices, reading 0.02 at build time, in
#: world.json's zero_shot), so they would only add noise to every benchmark drop and are not shipped.
BENCHMARKS = ("mc", "arithmetic")
FILES = {"model": "model", "facts": "facts.jsonl", "refusal": "refusal.jsonl", "templates": "templates.yaml",
         "attribution": "attribution.jsonl",
         "benchmarks": {name: f"benchmarks/{name}.jsonl" for name in BENCHMARKS}}
REFUSAL_MARKERS = ("i dont know", "i do not know")


def chance_level(benchmark: str, world_settings: dict[str, Any] | None = None) -> float:
    """The accuracy of guessing on one of the world's benchmarks: 1 of the 4 MC choices, 1 of the 2
    numbers a comparison names, 1 of the `reading_facts` answers a reading item states; 0 for open
    answers (additions, fact recall), where a guess is almost never right."""
    if benchmark == "mc":
        return 1 / MC_CHOICES
    if benchmark == "comparison":
        return 0.5
    if benchmark == "reading":
        return 1.0 / int((world_settings or {}).get("reading_facts") or WorldConfig().reading_facts)
    return 0.0


def default_world_dir() -> Path:
    """The world shipped inside the package (`src/knowpack/data/world`)."""
    return Path(__file__).resolve().parent.parent / "data" / "world"


# --- evaluation at build time ---------------------------------------------------------------


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 12,
                   batch_size: int = 64) -> list[str]:
    """Greedy continuations of `prompts`, cut at the end of the first line.

    A plain KV-cache loop (left padding, explicit positions) that stops as soon as every row has
    ended its line: for a model this small, `generate`'s per-step overhead would dominate.
    """
    newline = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("\n"))[-1]
    stops = torch.tensor([newline, tokenizer.eos_token_id])
    answers: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True, padding_side="left")
        mask = enc["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions, use_cache=True)
        last = positions[:, -1:]
        steps = []
        done = torch.zeros(mask.shape[0], dtype=torch.bool)
        for step in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1)
            steps.append(nxt)
            done |= torch.isin(nxt, stops)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            last = last + 1
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last,
                        use_cache=True, **with_cache(model, output_cache(out)))
        for row in torch.stack(steps, 1).tolist():
            cut = next((k for k, t in enumerate(row) if t in (newline, tokenizer.eos_token_id)), len(row))
            answers.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return answers


def is_correct(answer: str, aliases: Sequence[str]) -> bool:
    """SliCK's default rule: the normalised answer contains a normalised alias."""
    norm = normalize(answer)
    return any(normalize(a) and normalize(a) in norm for a in aliases)


def zero_shot_accuracy(model, tokenizer, questions: Sequence[str], aliases: Sequence[Sequence[str]]) -> list[bool]:
    answers = greedy_answers(model, tokenizer, [f"Question: {q}\nAnswer:" for q in questions])
    return [is_correct(a, al) for a, al in zip(answers, aliases)]


def _share(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def evaluate_world(model, tokenizer, world: World) -> dict[str, Any]:
    """Zero-shot accuracies of the base model on the world: facts by bucket and tier, MC, skill, refusals."""
    probe = world.group("probe")
    answers = greedy_answers(model, tokenizer, [f"Question: {wf.fact.question}\nAnswer:" for wf in probe])
    ok = [is_correct(a, wf.fact.answers) for a, wf in zip(answers, probe)]
    by_bucket: dict[str, list[bool]] = defaultdict(list)
    by_tier: dict[str, list[bool]] = defaultdict(list)
    for wf, good in zip(probe, ok):
        by_bucket[wf.fact.meta["bucket"]].append(good)
        by_tier[wf.fact.meta["tier"]].append(good)

    head = [wf for wf in probe if wf.fact.meta["bucket"] == "head"]
    held_out = zero_shot_accuracy(model, tokenizer, [wf.fact.meta["held_out_paraphrases"][0] for wf in head],
                                  [wf.fact.answers for wf in head])
    seen_para = zero_shot_accuracy(model, tokenizer, [wf.fact.meta["pretrain_paraphrases"][0] for wf in head],
                                   [wf.fact.answers for wf in head]) if head and head[0].fact.meta[
                                       "pretrain_paraphrases"] else []
    reference = world.group("reference")
    ref_ok = zero_shot_accuracy(model, tokenizer, [wf.fact.question for wf in reference],
                                [wf.fact.answers for wf in reference])
    mc_rows = [item.to_row() for item in world.mc_test]
    mc_continuation = score_mc(model, tokenizer, mc_rows, scoring="continuation", chat=False)
    mc_letter = score_mc(model, tokenizer, mc_rows, scoring="letter", chat=False)
    skills = {name: _share(zero_shot_accuracy(model, tokenizer, [it.question for it in items],
                                              [(it.answer,) for it in items]))
              for name, items in world.benchmarks.items()}
    arith_train = zero_shot_accuracy(model, tokenizer, [it.question for it in world.arithmetic_train],
                                     [(it.answer,) for it in world.arithmetic_train])
    refusal = world.group("refusal")
    refusal_answers = greedy_answers(model, tokenizer, [f"Question: {wf.fact.question}\nAnswer:" for wf in refusal])
    refused = [any(m in normalize(a) for m in REFUSAL_MARKERS) for a in refusal_answers]
    tail_answers = [a for a, wf in zip(answers, probe) if wf.fact.meta["bucket"] == "tail"]
    return {
        "facts": {**{b: _share(by_bucket[b]) for b in ("head", "torso", "tail")}, "all": _share(ok)},
        "facts_by_tier": {t: _share(v) for t, v in sorted(by_tier.items())},
        "head_pretrain_paraphrase": _share(seen_para),
        "head_held_out_paraphrase": _share(held_out),
        "reference_facts": _share(ref_ok),
        "mc": round(mc_continuation["accuracy"], 4),
        "mc_letter": round(mc_letter["accuracy"], 4),
        "mc_chance": chance_level("mc"),
        **skills,
        "arithmetic_pretrain_pairs": _share(arith_train),
        "refusal_rate": _share(refused),
        "tail_refusal_rate": _share([any(m in normalize(a) for m in REFUSAL_MARKERS) for a in tail_answers]),
        "definitions": {
            "facts": "greedy zero-shot 'Question: …\\nAnswer:' answer contains a normalised alias, per bucket",
            "mc": "held-out MC benchmark, likeliest choice text after 'Question: …\\nAnswer:' (continuation "
                  "scoring, what `eval.mc_scoring: auto` uses for this benchmark)",
            "mc_letter": "the same questions, likeliest letter A-D after the MMLU prompt (lm-eval's mmlu scoring); "
                         "the tiny model never learns the letter format, so this stays near chance",
            "arithmetic": "greedy zero-shot answer to held-out addition pairs contains the sum",
            "comparison": "greedy zero-shot answer to 'Which is larger, a or b?' (pairs held out of pretraining) "
                          "contains the larger number",
            "reading": "greedy zero-shot answer to a question about a stranger whose facts the question states "
                       "contains the stated answer",
            "refusal_rate": "share of refusal questions answered with 'I don't know'",
        },
    }


# --- writing the world ------------------------------------------------------------------------


def _templates_yaml() -> str:
    import yaml

    data = {r.name: list(r.templates) for r in RELATIONS}
    head = ("# Question templates of the embedded world: the first is canonical; the first "
            "n_pretrain_templates appear in pretraining, the rest never do.\n")
    extra = {r.name: r.n_pretrain_templates for r in RELATIONS}
    return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True) + \
        "# n_pretrain_templates: " + ", ".join(f"{k}={v}" for k, v in extra.items()) + "\n"


def write_world_data(world: World, out: Path) -> None:
    """facts.jsonl, refusal.jsonl, the benchmarks, attribution prompts and templates.yaml (all but the model)."""
    write_jsonl(out / FILES["facts"], [f.to_dict() for f in world.probe_facts])
    write_jsonl(out / FILES["refusal"], [f.to_dict() for f in world.refusal_facts])
    write_jsonl(out / FILES["benchmarks"]["mc"], [item.to_row() for item in world.mc_test])
    for name, items in world.benchmarks.items():
        if name in FILES["benchmarks"]:
            write_jsonl(out / FILES["benchmarks"][name], [item.to_row() for item in items])
    write_jsonl(out / FILES["attribution"], world.attribution_prompts())
    write_text(out / FILES["templates"], _templates_yaml())


def _check_target(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise KnowpackError(f"world output '{out}' is a file; give a directory")
    if not any(out.iterdir()):
        return
    if not force:
        raise KnowpackError(f"world directory '{out}' already exists; pass force=True (CLI: --force) to rebuild it, "
                            "or choose another --out")
    if not (out / "world.json").exists():
        # --force replaces a world, never an arbitrary directory that happens to be named.
        raise KnowpackError(f"'{out}' is not empty and holds no world.json; refusing to overwrite it even with "
                            "force; choose an empty or new directory")


def _sizes(world: World, tokens: int) -> dict[str, Any]:
    probe = world.group("probe")
    return {
        "people": world.config.n_people, "relations": len(RELATIONS), "probe_facts": len(probe),
        "templates_per_relation": len(RELATIONS[0].templates),
        "pretrain_templates_per_relation": RELATIONS[0].n_pretrain_templates,
        "reference_facts": len(world.group("reference")), "refusal_facts": len(world.group("refusal")),
        "mc_benchmark": len(world.mc_test), "attribution_prompts": len(world.attribution_prompts()),
        **{f"{name}_benchmark": len(items) for name, items in world.benchmarks.items()},
        "arithmetic_pretrain_pairs": len(world.arithmetic_train),
        "answer_pools": {r.name: len(world.pool(r.name)) for r in RELATIONS},
        "noisy_facts": sum(wf.true_share < 1 for wf in probe),
        "pretrain_tokens": tokens,
    }


def _popularity(world: World) -> dict[str, Any]:
    probe = world.group("probe")
    head_min = world.config.head_min_mentions
    buckets: dict[str, int] = defaultdict(int)
    for wf in probe:
        buckets[bucket_of(wf.fact.popularity or 0, head_min)] += 1
    return {
        "popularity_field": "mentions of the fact in the whole pretraining corpus (noisy facts: true and wrong)",
        "buckets": {
            "head": {"min_popularity": head_min, "facts": buckets["head"]},
            "torso": {"min_popularity": 1, "max_popularity": head_min - 1, "facts": buckets["torso"]},
            "tail": {"popularity": 0, "facts": buckets["tail"]},
        },
        "tiers": [{"name": t.name, "mentions_per_epoch": t.rate, "true_share": t.true_share,
                   "facts": sum(wf.fact.meta["tier"] == t.name for wf in probe)} for t in world.config.tiers],
    }


def build_world(out_dir: str | Path, seed: int = 0, force: bool = False, *,
                world_config: WorldConfig | None = None, pretrain_config: PretrainConfig | None = None,
                progress: bool = True) -> Path:
    """Generate the world, pretrain its base model and write everything to `out_dir`; returns it.

    Refuses to touch an existing, non-empty directory unless `force`, and even then replaces only a
    directory that holds a world. The new world is assembled beside the target and moved into place
    at the end, so an interrupted build leaves the old world (or nothing) behind.
    """
    out = Path(out_dir).expanduser()
    _check_target(out, force)
    wcfg = replace(world_config or WorldConfig(), seed=seed)
    pcfg = pretrain_config or PretrainConfig()
    t0 = time.perf_counter()
    log.info("generating world (seed %d)", seed)
    world = generate_world(wcfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        write_world_data(world, tmp)
        with deterministic_cpu(pcfg.threads):
            corpus = [epoch_documents(world, epoch) for epoch in range(wcfg.epochs)]
            log.info("training the tokenizer (vocab %d) on %d documents", pcfg.vocab_size, sum(map(len, corpus)))
            tokenizer = train_tokenizer(tokenizer_texts((doc for docs in corpus for doc in docs), world.made_up_words,
                                                        syllables()), pcfg.vocab_size)
            model, history = pretrain(corpus, tokenizer, pcfg, seed=seed, progress=progress)
            train_seconds = time.perf_counter() - t0
            # The world's figures are those of the weights as shipped (rounded to save_dtype).
            model = model.to(DTYPES[pcfg.save_dtype]).float()
            log.info("evaluating the base model zero-shot")
            accuracy = evaluate_world(model, tokenizer, world)
        model.to(DTYPES[pcfg.save_dtype]).save_pretrained(tmp / FILES["model"], safe_serialization=True)
        save_tokenizer(tokenizer, tmp / FILES["model"])
        model_bytes = sum(p.stat().st_size for p in (tmp / FILES["model"]).iterdir())
        import transformers

        from knowpack import __version__

        info = {
            "format": WORLD_FORMAT,
            "name": "knowpack embedded world",
            "seed": seed,
            "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - t0, 1),
            "pretrain_seconds": round(train_seconds, 1),
            "versions": {"knowpack": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "files": FILES,
            "sizes": _sizes(world, sum(h["tokens"] for h in history)),
            "popularity": _popularity(world),
            "model": {"architecture": "LlamaForCausalLM", "parameters": sum(p.numel() for p in model.parameters()),
                      "vocab_size": len(tokenizer), "hidden_size": pcfg.hidden_size, "layers": pcfg.layers,
                      "intermediate_size": pcfg.intermediate_size, "heads": pcfg.heads, "files_bytes": model_bytes},
            "settings": {"world": wcfg.to_dict(), "pretrain": pcfg.to_dict()},
            "pretraining": history,
            "zero_shot": accuracy,
        }
        write_json(tmp / "world.json", info)
        if out.exists():
            if (out / "cache").is_dir():  # probe caches are keyed by weights: stale entries are never read
                (out / "cache").rename(tmp / "cache")
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    z = accuracy
    log.info("world written to %s in %.0f s: head/torso/tail zero-shot %s/%s/%s, MC %s, arithmetic %s, refusals %s",
             out, time.perf_counter() - t0, z["facts"]["head"], z["facts"]["torso"], z["facts"]["tail"], z["mc"],
             z["arithmetic"], z["refusal_rate"])
    return out
