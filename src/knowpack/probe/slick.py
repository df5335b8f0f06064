"""SliCK knowledge categories (Gekhman et al., 2024; SPEC §3): probe, summarise, write, cache.

    from knowpack.probe import ProbeSettings, probe_facts, summarize_probe, write_probe
    settings = ProbeSettings(n_samples=16)
    rows = probe_facts(model, tok, facts, settings)
    write_probe(out_dir, rows, summarize_probe(rows, settings))

Each fact gets `n_prompts` few-shot prompts; per prompt one greedy answer and `n_samples` sampled
answers (temperature, top-k). P_greedy is the share of correct greedy answers, P_sample the share of
correct sampled answers; HighlyKnown: P_greedy = 1, MaybeKnown: 0 < P_greedy < 1, WeaklyKnown:
P_greedy = 0 < P_sample, Unknown: both 0. With `n_samples = 0` sampling is off, `p_sample` is null
and a fact with P_greedy = 0 is Unknown. With `lazy_samples` only facts with P_greedy = 0 are
sampled (a second generation pass): the category rule is unchanged (only those facts' categories
depend on samples) and the other facts' `p_sample` is null; it pays off when most facts are known.
Refusals (match.py) are flagged and never correct.

Sampling uses common random numbers: the samples of prompt i of fact f come from a stream seeded by
(sample seed, f's id, i, sample index), whatever else is probed, in whatever batches, eager or lazy;
so the same model gives the same rows, and before/after probes differ only where the model changed.

Cached results are keyed by the model's fingerprint, the fact set's and exemplar pool's
fingerprints, a hash of every setting that can change an answer and a probe-format version; the
key's parts are stored beside the rows and checked on load, so a result is never read back for
another model, fact set or setting.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from knowpack.config import config_hash, to_dict
from knowpack.facts import Fact, FactSet
from knowpack.io import read_json, read_jsonl, write_json, write_jsonl
from knowpack.probe.engine import GenerationBackend, HFEngine, stable_key
from knowpack.probe.match import DEFAULT_REFUSAL_PATTERNS, MATCH_MODES, RefusalDetector, matches
from knowpack.probe.prompts import build_probe_prompts, zero_shot_prompt

log = logging.getLogger(__name__)

CATEGORIES = ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")
PROBE_FILE, SUMMARY_FILE, KEY_FILE = "probe.jsonl", "summary.json", "cache_key.json"


@dataclass(frozen=True)
class ProbeSettings:
    """Everything that decides a probe's answers and categories (SPEC §3 defaults)."""

    n_prompts: int = field(default=10, metadata={"min": 1, "help": "few-shot prompts per fact"})
    shots: int = field(default=4, metadata={"min": 0, "help": "exemplars per prompt"})
    n_samples: int = field(default=16, metadata={"min": 0, "help": "sampled answers per prompt; 0 turns sampling off"})
    temperature: float = field(default=0.5, metadata={"min": 0, "help": "sampling temperature"})
    top_k: int = field(default=40, metadata={"min": 0, "help": "sample among the k likeliest tokens; 0 = all"})
    max_new_tokens: int = field(default=32, metadata={"min": 1, "help": "answer length limit in tokens"})
    match: Literal["contains", "exact"] = field(
        default="contains", metadata={"help": "answer contains an alias (paper) or equals one (Gekhman)"})
    refusal_patterns: tuple[str, ...] = field(
        default=DEFAULT_REFUSAL_PATTERNS, metadata={"help": "answers containing any of these are refusals"})
    seed: int = field(default=0, metadata={"help": "exemplar choice and sampling seed"})
    sample_seed: int | None = field(default=None, metadata={
        "help": "seed of the sampled answers' random streams (null: seed); a run's noise-floor control "
                "re-probes the base model with another one"})
    exemplars: Literal["per_question", "shared"] = field(default="per_question", metadata={
        "help": "per_question: each (fact, prompt) draws its own exemplars, seeded by the fact id (Gekhman et al.); "
                "shared: one exemplar set per (relation, prompt) for all its facts (faster, correlated errors)"})
    batch_size: int = field(default=64, metadata={"min": 1, "help": "prompts per generation batch"})
    chat: bool | None = field(default=None, metadata={"help": "use the chat template (null: when the tokenizer has one)"})
    keep_samples: bool = field(default=False, metadata={"help": "also write every sampled answer to probe.jsonl"})
    lazy_samples: bool = field(default=False, metadata={
        "help": "sample only facts with P_greedy = 0 (the only ones whose category needs it); the others get "
                "p_sample null. Saves work when most facts are known (after training); otherwise the second "
                "pass's prefill costs more than it saves"})

    def __post_init__(self) -> None:
        problems = []
        if self.match not in MATCH_MODES:
            problems.append(f"match must be one of {', '.join(MATCH_MODES)}, got '{self.match}'")
        if self.n_samples and self.temperature <= 0:
            problems.append("temperature must be > 0 when n_samples > 0")
        for name in ("n_prompts", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("shots", "n_samples", "top_k"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if problems:
            raise ValueError("; ".join(problems))
        object.__setattr__(self, "refusal_patterns", tuple(self.refusal_patterns))

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def fingerprint(self) -> str:
        """Hash of the settings that change results: everything but `keep_samples` (which adds a column)
        and `batch_size` (which, with common random numbers, changes no answer)."""
        d = self.to_dict()
        d.pop("keep_samples")
        d.pop("batch_size")
        return config_hash(d)


def categorize(p_greedy: float, p_sample: float | None) -> str:
    """The SliCK category of a fact from its P_greedy and P_sample (None: sampling off)."""
    if p_greedy >= 1.0:
        return "HighlyKnown"
    if p_greedy > 0.0:
        return "MaybeKnown"
    if p_sample:
        return "WeaklyKnown"
    return "Unknown"


def _make_backend(model: Any, tokenizer: Any, settings: ProbeSettings,
                  backend: GenerationBackend | None) -> GenerationBackend:
    return backend if backend is not None else HFEngine(model, tokenizer, batch_size=settings.batch_size)


def _progress_bar(n_prompts: int, per_fact: int, enabled: bool, desc: str):
    """A bar counted in prompts but shown in facts (rate and ETA in facts per second)."""
    from tqdm.auto import tqdm

    return tqdm(total=n_prompts, unit="fact", unit_scale=1 / per_fact, desc=desc, disable=not enabled,
                dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} [{elapsed}<{remaining}, {rate_fmt}]")


def probe_facts(model: Any, tokenizer: Any, facts: FactSet | Sequence[Fact], settings: ProbeSettings | None = None,
                *, backend: GenerationBackend | None = None, progress: bool = True,
                exemplars: FactSet | Sequence[Fact] | None = None) -> list[dict[str, Any]]:
    """Probe every fact; one row per fact, in order.

    Row fields: `id`, `category`, `p_greedy`, `p_sample` (null when not sampled), `greedy_answers`
    (one per prompt), `greedy_correct` and `refused` (one flag per greedy answer), and with
    `keep_samples` also `sampled_answers` (per prompt, a list of samples).
    `exemplars` is the pool few-shot exemplars come from (default: `facts`); pass the same pool
    before and after training so both probes use the same prompts.
    """
    settings = settings or ProbeSettings()
    facts = list(facts)
    if not facts:
        return []
    prompts = build_probe_prompts(facts, tokenizer, n_prompts=settings.n_prompts, shots=settings.shots,
                                  seed=settings.seed, exemplars=exemplars, chat=settings.chat, mode=settings.exemplars)
    flat = [p for per_fact in prompts for p in per_fact]
    keys = [stable_key(f"{fact.id}|{i}") for fact in facts for i in range(settings.n_prompts)]
    engine = _make_backend(model, tokenizer, settings, backend)
    k = settings.n_prompts
    gen = dict(temperature=settings.temperature, top_k=settings.top_k, max_new_tokens=settings.max_new_tokens,
               seed=settings.seed if settings.sample_seed is None else settings.sample_seed)
    eager = settings.n_samples and not settings.lazy_samples
    log.info("probing %d facts: %d prompts, greedy%s", len(facts), len(flat),
             f" + {settings.n_samples} samples each" if eager else "")
    with _progress_bar(len(flat), k, progress, "probe") as bar:
        outs = engine.generate(flat, greedy=True, n_samples=settings.n_samples if eager else 0,
                               progress=bar.update, sample_keys=keys, **gen)
    refusal = RefusalDetector(settings.refusal_patterns)

    def correct(answer: str, fact: Fact) -> bool:
        return not refusal(answer, fact.answers) and matches(answer, fact.answers, settings.match)

    greedy = [[o.greedy or "" for o in outs[j * k:(j + 1) * k]] for j in range(len(facts))]
    greedy_ok = [[correct(a, f) for a in answers] for f, answers in zip(facts, greedy)]
    samples: dict[int, list[list[str]]] = {}
    if eager:
        samples = {j: [o.samples for o in outs[j * k:(j + 1) * k]] for j in range(len(facts))}
    elif settings.n_samples:  # lazy: only facts whose category depends on samples
        need = [j for j, ok in enumerate(greedy_ok) if not any(ok)]
        log.info("sampling %d of %d facts (P_greedy = 0)", len(need), len(facts))
        with _progress_bar(len(need) * k, k, progress, "samples") as bar:
            more = engine.generate([p for j in need for p in prompts[j]], greedy=False,
                                   n_samples=settings.n_samples, progress=bar.update,
                                   sample_keys=[keys[j * k + i] for j in need for i in range(k)], **gen)
        samples = {j: [o.samples for o in more[i * k:(i + 1) * k]] for i, j in enumerate(need)}

    rows = []
    for j, fact in enumerate(facts):
        p_greedy = sum(greedy_ok[j]) / k
        p_sample = None
        if j in samples:
            flat_samples = [x for per in samples[j] for x in per]
            p_sample = sum(correct(x, fact) for x in flat_samples) / len(flat_samples)
        row: dict[str, Any] = {
            "id": fact.id,
            "category": categorize(p_greedy, p_sample),
            "p_greedy": p_greedy,
            "p_sample": p_sample,
            "greedy_answers": greedy[j],
            "greedy_correct": greedy_ok[j],
            "refused": [refusal(a, fact.answers) for a in greedy[j]],
        }
        if settings.keep_samples and j in samples:
            row["sampled_answers"] = samples[j]
        rows.append(row)
    return rows


def summarize_probe(rows: Sequence[dict[str, Any]], settings: ProbeSettings | None = None) -> dict[str, Any]:
    """Counts and shares per category, mean P_greedy/P_sample, greedy refusal rate, and the settings."""
    n = len(rows)
    counts = {c: sum(r["category"] == c for r in rows) for c in CATEGORIES}
    greedy = [x for r in rows for x in r["refused"]]
    samples = [r["p_sample"] for r in rows if r.get("p_sample") is not None]
    return {
        "n_facts": n,
        "counts": counts,
        "shares": {c: (counts[c] / n if n else 0.0) for c in CATEGORIES},
        "p_greedy_mean": sum(r["p_greedy"] for r in rows) / n if n else 0.0,
        "p_sample_mean": sum(samples) / len(samples) if samples else None,
        "greedy_refusal_rate": sum(greedy) / len(greedy) if greedy else 0.0,
        "settings": settings.to_dict() if settings is not None else None,
    }


def write_probe(out_dir: str | Path, rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write `probe.jsonl` and `summary.json` into `out_dir`, each atomically; returns both paths."""
    out = Path(out_dir)
    return write_jsonl(out / PROBE_FILE, rows), write_json(out / SUMMARY_FILE, summary)


def read_probe(out_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    out = Path(out_dir)
    return read_jsonl(out / PROBE_FILE), read_json(out / SUMMARY_FILE)


# --- zero-shot answering -------------------------------------------------------------------


def answer_zero_shot(model: Any, tokenizer: Any, questions: Sequence[str], *, batch_size: int = 32,
                     max_new_tokens: int = 32, chat: bool | None = None, backend: GenerationBackend | None = None,
                     progress: bool = False) -> list[str]:
    """One greedy answer per question to `Question: {q}\\nAnswer:` (or its chat form), cut at the line end."""
    if not questions:
        return []
    prompts = [zero_shot_prompt(q, tokenizer, chat=chat) for q in questions]
    engine = backend if backend is not None else HFEngine(model, tokenizer, batch_size=batch_size)
    from tqdm.auto import tqdm

    with tqdm(total=len(prompts), unit="question", desc="answer", disable=not progress) as bar:
        outs = engine.generate(prompts, greedy=True, n_samples=0, max_new_tokens=max_new_tokens, progress=bar.update)
    return [o.greedy or "" for o in outs]


# --- caching -------------------------------------------------------------------------------


def model_fingerprint(model: Any, *, exact_limit: int = 50_000_000) -> str:
    """A hash of the model's config, dtype and weights (including any adapter weights).

    Models up to `exact_limit` parameters hash every weight byte; larger ones hash per-tensor
    float64 sums, sums of squares and a strided sample, computed on the model's device, so a real
    model is fingerprinted in seconds and any training step still changes the fingerprint.
    """
    import torch

    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        # Where the model was loaded from, and the transformers version that saved or loaded it, are
        # not part of it: the same weights from another directory (a fresh clone, a copied checkpoint)
        # share their cache entries.
        settings = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    tensors = list(model.state_dict().items())
    exact = sum(t.numel() for _, t in tensors) <= exact_limit
    with torch.no_grad():
        for name, t in tensors:
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
            flat = t.detach().reshape(-1)
            if exact:
                h.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
            elif flat.numel():
                step = max(1, flat.numel() // 4096)
                stats = torch.stack([flat.sum(dtype=torch.float64),
                                     torch.linalg.vector_norm(flat, dtype=torch.float32).double()])
                h.update(stats.cpu().numpy().tobytes())
                h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# Bump when prompt construction, matching or the engine change answers, so old caches are not reused.
PROBE_FORMAT = "knowpack-probe-2"


def probe_cache_key(model_id_or_fingerprint: str, facts_fingerprint: str, settings: ProbeSettings, *,
                    exemplars_fingerprint: str | None = None) -> str:
    """The cache key of a probe: model, facts, settings and exemplar pool (None: the facts), hashed together."""
    parts = _key_parts(model_id_or_fingerprint, facts_fingerprint, settings, exemplars_fingerprint)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _key_parts(model: str, facts_fp: str, settings: ProbeSettings, exemplars_fp: str | None) -> dict[str, Any]:
    return {"format": PROBE_FORMAT, "model": model, "facts": facts_fp, "exemplars": exemplars_fp or facts_fp,
            "settings": settings.fingerprint()}


def save_probe_cache(cache_dir: str | Path, model_id_or_fingerprint: str, facts_fingerprint: str,
                     settings: ProbeSettings, rows: Sequence[dict[str, Any]], summary: dict[str, Any], *,
                     exemplars_fingerprint: str | None = None) -> Path:
    """Store a probe result under `cache_dir/<key>/`; the key file is written last, marking it complete."""
    parts = _key_parts(model_id_or_fingerprint, facts_fingerprint, settings, exemplars_fingerprint)
    d = Path(cache_dir) / probe_cache_key(model_id_or_fingerprint, facts_fingerprint, settings,
                                          exemplars_fingerprint=exemplars_fingerprint)
    write_probe(d, rows, summary)
    write_json(d / KEY_FILE, {**parts, "settings_full": settings.to_dict()})
    return d


def load_probe_cache(cache_dir: str | Path, model_id_or_fingerprint: str, facts_fingerprint: str,
                     settings: ProbeSettings, *, exemplars_fingerprint: str | None = None,
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """The cached (rows, summary) for exactly this model, fact set, settings and exemplar pool, or None."""
    parts = _key_parts(model_id_or_fingerprint, facts_fingerprint, settings, exemplars_fingerprint)
    d = Path(cache_dir) / probe_cache_key(model_id_or_fingerprint, facts_fingerprint, settings,
                                          exemplars_fingerprint=exemplars_fingerprint)
    try:
        stored = read_json(d / KEY_FILE)
        if {k: stored.get(k) for k in parts} != parts:
            log.warning("probe cache %s holds another probe's result; ignoring it", d)
            return None
        rows, summary = read_probe(d)
    except (OSError, ValueError) as exc:  # missing (not cached) or unreadable (interrupted) entry
        log.debug("no usable probe cache at %s: %s", d, exc)
        return None
    if settings.keep_samples and not stored.get("settings_full", {}).get("keep_samples"):
        return None  # cached without the sampled answers asked for now
    log.debug("probe result read from cache %s", d)
    return rows, summary
