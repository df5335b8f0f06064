"""Probing with vLLM, where it is installed (`pip install knowpack[vllm]`, Linux with a CUDA GPU).

    knowpack probe --backend vllm --model BASE --facts F --out DIR
    knowpack probe --backend vllm --model BASE --adapter RUN/adapter --facts F --out DIR

    backend = VLLMBackend(model_dir)                  # a plain Hugging Face model directory
    rows = probe_facts(None, backend.tokenizer, facts, settings, backend=backend)

The engine starts on the first `generate` call (after `prepare`, e.g. merging an adapter, if given),
so a probe answered from the cache neither merges nor loads anything onto the GPU.

`VLLMBackend` implements `GenerationBackend` (probe/engine.py), so SliCK probing, zero-shot answers
and the cache work unchanged. vLLM serves plain Hugging Face models only: it cannot load LoKI rows
or DoRA's magnitude vectors, so an adapter is merged into a full model first (`served_model_dir`),
for every method alike. `vllm` is imported when a backend is made, never at module import, so
knowpack works without it and says how to install it when it is asked for.

Prompts are tokenised here with the Hugging Face tokenizer (the same ids the built-in engine feeds)
and passed to vLLM as token ids. Greedy answers use temperature 0; samples use the probe's
temperature and top-k with a fixed seed per call, so a probe is repeatable on one vLLM build.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from knowpack.errors import KnowpackError
from knowpack.io import read_json, write_json
from knowpack.probe.engine import Completions, ProgressFn, as_prompt, check_sampling, cut_answer, stream_key
from knowpack.probe.prompts import Prompt

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install knowpack[vllm]"
#: prompts per vLLM call: vLLM batches internally; chunks only pace the progress bar
CHUNK = 512


def require_vllm() -> Any:
    """The `vllm` module, or a KnowpackError that says how to install it."""
    try:
        import vllm
    except ImportError:
        raise KnowpackError(f"the vLLM backend needs vLLM, which is not installed: {INSTALL_HINT} (Linux with "
                            "a CUDA GPU), or probe with the built-in engine (--backend hf)") from None
    return vllm


class VLLMBackend:
    """A `GenerationBackend` on a vLLM engine serving the plain Hugging Face model in `model_dir`.

    `prepare`, if given, runs once before the engine starts (the CLI merges an adapter there), so
    `model_dir` need not exist until then; `tokenizer` must then be given.
    """

    def __init__(self, model_dir: str | Path, tokenizer: Any = None, *, dtype: str = "auto", seed: int = 0,
                 gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
                 trust_remote_code: bool = False, prepare: Callable[[], Any] | None = None, **engine_args: Any):
        self._vllm = require_vllm()
        self.model_dir = str(model_dir)
        if tokenizer is None:
            from knowpack.models import load_tokenizer

            tokenizer = load_tokenizer(self.model_dir, trust_remote_code=trust_remote_code)
        self.tokenizer = tokenizer
        self._prepare = prepare
        # The greedy and the sampling call of a chunk share their prompts: prefix caching prefills them once.
        self._engine_args = {"model": self.model_dir, "tokenizer": self.model_dir, "dtype": dtype, "seed": seed,
                             "gpu_memory_utilization": gpu_memory_utilization,
                             "trust_remote_code": trust_remote_code, "enable_prefix_caching": True, **engine_args}
        if max_model_len is not None:
            self._engine_args["max_model_len"] = max_model_len
        self._llm: Any = None

    @property
    def llm(self) -> Any:
        """The vLLM engine, started on first use."""
        if self._llm is None:
            if self._prepare is not None:
                self._prepare()
            log.info("starting vLLM on %s", self.model_dir)
            self._llm = self._vllm.LLM(**self._engine_args)
        return self._llm

    def _token_prompts(self, prompts: Sequence[Prompt]) -> list[dict[str, list[int]]]:
        out = []
        for p in prompts:
            ids = self.tokenizer(p.text, add_special_tokens=p.add_special_tokens)["input_ids"]
            out.append({"prompt_token_ids": list(ids)})
        return out

    def _params(self, *, n: int, temperature: float, top_k: int, max_new_tokens: int, seed: int, stop: str):
        return self._vllm.SamplingParams(n=n, temperature=temperature, top_k=top_k if top_k > 0 else -1,
                                     max_tokens=max_new_tokens, stop=[stop] if stop else None,
                                     seed=seed if temperature > 0 else None, skip_special_tokens=True)

    def generate(self, prompts: Sequence[Prompt | str], *, greedy: bool = True, n_samples: int = 0,
                 temperature: float = 0.5, top_k: int = 40, max_new_tokens: int = 32, seed: int = 0,
                 stop: str = "\n", progress: ProgressFn | None = None,
                 sample_keys: Sequence[int] | None = None) -> list[Completions]:
        """As `HFEngine.generate`. Common random numbers come from vLLM's per-request seed: each prompt's
        samples are seeded by (seed, its sample key), so they do not depend on the other prompts of the
        call (they are not the HF engine's draws: compare probes made with one backend only)."""
        keys = check_sampling(n_samples, temperature, len(prompts), sample_keys)
        items = [as_prompt(p) for p in prompts]
        results = [Completions(None, []) for _ in items]
        if not items or (not greedy and not n_samples):
            return results
        greedy_params = self._params(n=1, temperature=0.0, top_k=0, max_new_tokens=max_new_tokens, seed=seed,
                                     stop=stop)
        for lo in range(0, len(items), CHUNK):
            chunk = self._token_prompts(items[lo:lo + CHUNK])
            if greedy:
                for res, out in zip(results[lo:], self.llm.generate(chunk, greedy_params, use_tqdm=False)):
                    res.greedy = cut_answer(out.outputs[0].text, stop)
            if n_samples:
                params = [self._params(n=n_samples, temperature=temperature, top_k=top_k,
                                       max_new_tokens=max_new_tokens, seed=stream_key(seed, key, 0) & 0x7FFFFFFF, stop=stop)
                          for key in keys[lo:lo + CHUNK]]
                for res, out in zip(results[lo:], self.llm.generate(chunk, params, use_tqdm=False)):
                    res.samples = [cut_answer(o.text, stop) for o in out.outputs]
            if progress is not None:
                progress(len(chunk))
        return results


#: written into a merged model directory: the source it was merged from (see `served_model_dir`)
SOURCE_STAMP = "knowpack_source.json"


def served_model_dir(model: str | Path, adapter: str | Path | None, merged_dir: str | Path, *,
                     dtype: str = "auto", trust_remote_code: bool = False) -> Path:
    """The directory vLLM should load: `model` itself, or `model` with `adapter` merged into `merged_dir`.

    Every adapter is merged (vLLM cannot load LoKI or DoRA adapters; merging LoRA as well keeps one
    path), and the merged model is written atomically, so vLLM never sees half of one. A merge of
    the same base and adapter already in `merged_dir` (its stamp says so) is reused.
    """
    if adapter is None:
        return Path(model)
    from knowpack.adapters import merge_adapter

    merged, source = Path(merged_dir), source_fingerprint(model, adapter)
    try:
        if read_json(merged / SOURCE_STAMP).get("source") == source:
            log.info("reusing the merge of %s in %s", adapter, merged)
            return merged
    except (OSError, ValueError, AttributeError):
        pass
    log.info("merging %s into %s for vLLM", adapter, merged)
    out = Path(merge_adapter(str(model), adapter, merged, dtype=dtype, trust_remote_code=trust_remote_code))
    write_json(out / SOURCE_STAMP, {"source": source, "model": str(model), "adapter": str(adapter)})
    return out


def source_fingerprint(model: str | Path, adapter: str | Path | None = None) -> str:
    """A cache key for what vLLM serves, without loading it: the base model directory's fingerprint
    and, with an adapter, a hash of every file in the adapter directory (taken before any merge)."""
    h = hashlib.sha256(dir_fingerprint(model).encode())
    if adapter is not None:
        for f in sorted(p for p in Path(adapter).rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(adapter)}|{f.stat().st_size}|".encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def dir_fingerprint(model_dir: str | Path) -> str:
    """A cache key for the model in a directory, without loading it: its config and weight files.

    Hashes config.json and generation_config.json, and for each weights file its name, size,
    modification time and safetensors header (tensor names, shapes, offsets), so a model rewritten
    in place never matches an old probe (a copy elsewhere is probed anew: safe, if not free).
    """
    d = Path(model_dir)
    h = hashlib.sha256()
    for name in ("config.json", "generation_config.json"):
        if (d / name).exists():
            h.update(name.encode() + (d / name).read_bytes())
    for f in sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
        if f.suffix == ".safetensors":
            with open(f, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                h.update(fh.read(min(size, 100_000_000)))
    return h.hexdigest()[:16]


def describe(backend: Any) -> dict[str, Any]:
    """What to record about the backend a probe ran on."""
    if isinstance(backend, VLLMBackend):
        try:
            import vllm

            version = getattr(vllm, "__version__", None)
        except ImportError:  # pragma: no cover - a VLLMBackend exists only with vllm
            version = None
        return {"backend": "vllm", "vllm": version, "model_dir": backend.model_dir}
    return {"backend": "hf"}


__all__ = ["VLLMBackend", "require_vllm", "served_model_dir", "source_fingerprint", "dir_fingerprint", "INSTALL_HINT",
           "describe"]
