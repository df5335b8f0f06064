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

_CONSOLE_LOGGERS = ("", "knowpack", "lm_eval", "datasets", "peft", "accelerate", "httpx", "urllib3", "filelock",
                    "submitit", "transformers")


def bench_module(name: str):
    """A context manager yielding the script `bench/<name>.py` imported as a module (removed afterwards)."""
    import contextlib
    import importlib.util
    import sys
    from pathlib import Path

    @contextlib.contextmanager
    def loaded():
        path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"knowpack_bench_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
            yield module
        finally:
            sys.modules.pop(spec.name, None)

    return loaded()


@pytest.fixture(autouse=True)
def _console_put_back():
    """`knowpack.cli.main` configures the console (logger levels, warning filters, transformers' bars) for the
    whole process, as a CLI should; put it back after each test so no test sees another's console."""
    import logging
    import warnings

    levels = {name: logging.getLogger(name).level for name in _CONSOLE_LOGGERS}
    handlers = list(logging.getLogger().handlers)
    filters = list(warnings.filters)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().handlers[:] = handlers
    warnings.filters[:] = filters
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.enable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


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
