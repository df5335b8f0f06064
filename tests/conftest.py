"""Shared fixtures: tiny tokenizers and models built in code (no downloads)."""

from __future__ import annotations

import os

# Idle OpenMP threads spinning on a shared 2-core machine slow every test several-fold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: CI runs slow cases in a reduced form (smaller sizes, fewer steps) when this is set.
FAST = os.environ.get("KNOWPACK_FAST_TESTS") == "1"


@pytest.fixture(scope="session")
def tok():
    from knowpack.models import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tok):
    """A tiny random Llama with its tokenizer saved in Hugging Face format."""
    from knowpack.models import tiny_model

    path = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_model("llama", seed=0, vocab_size=len(tok))
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path
