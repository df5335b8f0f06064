"""The method registry: every training method is one module plus one `register(...)` call.

Every list of methods (CLI choices, config validation, tests) is derived from `METHODS`, so a new
method is added in one place. A method knows how to make a base model trainable, how to save what
it trained as an adapter, how to load that adapter onto a base model, and how to merge it into a
plain Hugging Face model.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from knowpack.errors import KnowpackError

if TYPE_CHECKING:
    import torch.nn as nn


class Method:
    """Base class of a training method; subclasses override the four life-cycle steps."""

    name: str = ""
    #: A file that only this method's adapter directories hold; used to recognise an adapter.
    adapter_marker: str = ""
    #: Learning rate used when the config leaves `lr` unset (the papers' defaults).
    default_lr: float = 1e-3
    #: The TrainSettings attribute holding this method's settings (None: the method has none).
    settings_key: str | None = None
    summary: str = ""

    def prepare(self, model: "nn.Module", settings: Any, **context: Any) -> "nn.Module":
        """Return the model to train, with exactly the parameters of this method requiring grad."""
        raise NotImplementedError

    def save(self, model: "nn.Module", out_dir: Path, *, base_model: str) -> None:
        raise NotImplementedError

    def load(self, base: "nn.Module", adapter_dir: Path) -> "nn.Module":
        raise NotImplementedError

    def merge(self, model: "nn.Module") -> "nn.Module":
        """A plain transformers model with the adaptation folded into its weights."""
        raise NotImplementedError


METHODS: dict[str, Method] = {}

# Modules that register methods when imported; loaded lazily so `import knowpack` stays light.
_PROVIDERS = ("knowpack.methods.peft_methods", "knowpack.methods.full", "knowpack.methods.loki.method")


def register(method: Method) -> Method:
    if not method.name or method.name in METHODS:
        raise ValueError(f"method name '{method.name}' is empty or already registered")
    METHODS[method.name] = method
    return method


def _load_providers() -> None:
    for mod in _PROVIDERS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            # A provider that is not written yet simply contributes no method.
            if exc.name != mod:
                raise


def method_names() -> list[str]:
    _load_providers()
    return list(METHODS)


def get_method(name: str) -> Method:
    _load_providers()
    if name not in METHODS:
        raise KnowpackError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def detect_adapter(adapter_dir: str | Path) -> Method:
    """The method whose adapter files are in `adapter_dir`."""
    _load_providers()
    path = Path(adapter_dir)
    if not path.is_dir():
        raise KnowpackError(f"adapter directory '{path}' does not exist")
    # `config.json` (a whole saved model) is the least specific marker, so it is tried last.
    for method in sorted(METHODS.values(), key=lambda m: m.adapter_marker == "config.json"):
        if method.adapter_marker and (path / method.adapter_marker).exists():
            return method
    markers = ", ".join(sorted({m.adapter_marker for m in METHODS.values() if m.adapter_marker}))
    raise KnowpackError(f"'{path}' holds no adapter knowpack recognises (looked for {markers})")


def count_trainable(model: "nn.Module") -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


MethodFactory = Callable[[], Method]
