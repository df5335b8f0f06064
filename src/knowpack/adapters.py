"""Adapter life cycle outside training: load an adapter onto its base model, merge, save plainly.

    knowpack merge --model BASE --adapter RUN/adapter --out MERGED

The adapter's method is recognised from its files (PEFT's `adapter_config.json`, LoKI's
`loki_config.json`, or a whole saved model), so one command serves every method.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from knowpack.methods import detect_adapter
from knowpack.models import load_model, save_tokenizer

log = logging.getLogger(__name__)


def load_adapted(model_path: str, adapter_dir: str | Path, *, device: str = "auto", dtype: str = "auto",
                 trust_remote_code: bool = False):
    """(model with the adapter applied, tokenizer, method)."""
    method = detect_adapter(adapter_dir)
    base, tok = load_model(model_path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    return method.load(base, Path(adapter_dir)), tok, method


def merge_adapter(model_path: str, adapter_dir: str | Path, out_dir: str | Path, *, dtype: str = "auto",
                  trust_remote_code: bool = False) -> Path:
    """Write a plain Hugging Face model (weights + tokenizer) with the adapter folded in."""
    model, tok, method = load_adapted(model_path, adapter_dir, device="cpu", dtype=dtype,
                                      trust_remote_code=trust_remote_code)
    merged = method.merge(model)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp), safe_serialization=True)
    save_tokenizer(tok, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("merged %s adapter into %s", method.name, out)
    return out
