"""LoKI (Low-damage Knowledge Implanting): KVA attribution, node selection and the LoKI layers.

    from knowpack.methods.loki import attribute, select_nodes
    scores = attribute(model, tokenizer, prompts)          # float32 [N, L, D]
    layers = select_nodes(scores, q=10)                    # L sorted row-index lists

Names are imported on first use, so importing the package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "attribute": "kva", "attribute_ids": "kva", "load_attribution_prompts": "kva", "format_mmlu": "kva",
    "save_scores": "kva", "load_scores": "kva", "METHODS": "kva",
    "select_nodes": "select", "save_nodes": "select", "load_nodes": "select", "rows_per_layer": "select",
    "STRATEGIES": "select",
    "down_projs": "arch", "decoder_layers": "arch", "SUPPORTED_ARCHS": "arch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
