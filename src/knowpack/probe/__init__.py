"""Probing: which facts does a model know? SliCK categories (SPEC §3) on a fast generation engine.

    prompts.py  few-shot / zero-shot prompts with shared prefixes
    engine.py   GenerationBackend, the batched HF engine, the naive reference
    match.py    answer normalisation, matching, refusal detection
    slick.py    ProbeSettings, probe_facts, summaries, output files, cache
"""

from knowpack.probe.engine import Completions, GenerationBackend, HFEngine, naive_generate
from knowpack.probe.match import DEFAULT_REFUSAL_PATTERNS, is_correct, is_refusal, matches, normalize
from knowpack.probe.prompts import Prompt, build_probe_prompts, select_exemplars, zero_shot_prompt
from knowpack.probe.slick import (
    CATEGORIES,
    ProbeSettings,
    answer_zero_shot,
    categorize,
    load_probe_cache,
    model_fingerprint,
    probe_cache_key,
    probe_facts,
    read_probe,
    save_probe_cache,
    summarize_probe,
    write_probe,
)

__all__ = [
    "CATEGORIES", "Completions", "DEFAULT_REFUSAL_PATTERNS", "GenerationBackend", "HFEngine", "Prompt",
    "ProbeSettings", "answer_zero_shot", "build_probe_prompts", "categorize", "is_correct", "is_refusal",
    "load_probe_cache", "matches", "model_fingerprint", "naive_generate", "normalize", "probe_cache_key",
    "probe_facts", "read_probe", "save_probe_cache", "select_exemplars", "summarize_probe", "write_probe",
    "zero_shot_prompt",
]
