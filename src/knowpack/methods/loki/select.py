"""Node selection (SPEC §5.1): which rows of each `down_proj.weight` LoKI trains, from KVA scores.

k = floor(q/100 · D) rows per layer. Every prompt votes for its k lowest-scored (signed) rows in
each layer; per layer the k rows with most votes win, ties broken by lower mean score, then lower
index — deterministic, unlike the reference's quicksort ties.

    layers = select_nodes(scores, q=10)                           # list of L sorted index lists
    save_nodes("nodes.json", layers, 10, "layer_balanced_lowest", {"scores": "s.safetensors"})

Strategies: `layer_balanced_lowest` (default), `layer_balanced_highest`, `global_lowest` and
`global_highest` (one vote over all L·D rows per prompt, k_total = floor(q/100 · L · D), grouped back
per layer, possibly unevenly), and `random` (seeded, k per layer) as a control.
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from knowpack.errors import InputError, KnowpackError
from knowpack.io import read_json, write_json

log = logging.getLogger(__name__)

STRATEGIES = ("layer_balanced_lowest", "layer_balanced_highest", "global_lowest", "global_highest", "random")
DEFAULT_STRATEGY = "layer_balanced_lowest"
_RESERVED = ("q", "strategy", "layers")


def _check_q(q: float) -> Fraction:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or not 0 < q <= 100:
        raise KnowpackError(f"q must be a percentage in (0, 100], got {q!r}")
    # Exact decimal arithmetic: floor(0.29 * 100) must be 29, not 28.
    return Fraction(str(q))


def _rows(q: float, total: int, what: str) -> int:
    k = math.floor(_check_q(q) * total / 100)
    if k == 0:
        least = math.ceil(Fraction(100 * 100, total)) / 100  # smallest q (2 decimals) giving one row
        raise KnowpackError(f"model too small for q={q}: {what} gives 0 rows per layer; "
                            f"raise q to at least {least:g}")
    return k


def rows_per_layer(q: float, hidden: int) -> int:
    """k = floor(q/100 · D), computed exactly; KnowpackError when it is 0."""
    return _rows(q, hidden, f"hidden size {hidden}")


def _votes_and_means(scores: np.ndarray, k: int, lowest: bool) -> tuple[np.ndarray, np.ndarray]:
    """scores [N, R]: per prompt the k lowest (or highest) rows get a vote; returns (votes [R], mean [R])."""
    n, r = scores.shape
    # Stable sort: equal scores within a prompt vote for the lower index first.
    order = np.argsort(scores if lowest else -scores, axis=1, kind="stable")[:, :k]
    votes = np.bincount(order.ravel(), minlength=r)
    return votes, scores.mean(axis=0)


def _winners(votes: np.ndarray, means: np.ndarray, k: int, lowest: bool) -> np.ndarray:
    """The k rows with most votes; ties by lower (lowest) or higher (highest) mean score, then lower index."""
    index = np.arange(votes.shape[0])
    mean_key = means if lowest else -means
    ranked = np.lexsort((index, mean_key, -votes))  # last key is the primary one
    return ranked[:k]


def select_nodes(scores: torch.Tensor, q: float, strategy: str = DEFAULT_STRATEGY, seed: int = 0) -> list[list[int]]:
    """Pick the rows to train per layer from KVA scores [N, L, D]; returns L sorted index lists."""
    if strategy not in STRATEGIES:
        raise KnowpackError(f"unknown selection strategy '{strategy}'; use one of: {', '.join(STRATEGIES)}")
    if not isinstance(scores, torch.Tensor) or scores.ndim != 3:
        raise KnowpackError(f"scores must be a tensor of shape [N, L, D], got "
                            f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    n, num_layers, hidden = scores.shape
    if strategy == "random":
        k = rows_per_layer(q, hidden)
        rng = np.random.default_rng(seed)
        return [sorted(int(i) for i in rng.choice(hidden, size=k, replace=False)) for _ in range(num_layers)]
    if n == 0:
        raise KnowpackError(f"strategy '{strategy}' needs attribution scores from at least one prompt")
    s = scores.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(s).all():
        raise KnowpackError("attribution scores contain NaN or infinite values; re-run attribution in float32")
    lowest = strategy.endswith("_lowest")
    if strategy.startswith("layer_balanced"):
        k = rows_per_layer(q, hidden)
        layers = []
        for layer in range(num_layers):
            votes, means = _votes_and_means(s[:, layer, :], k, lowest)
            layers.append(sorted(int(i) for i in _winners(votes, means, k, lowest)))
        return layers
    k_total = _rows(q, num_layers * hidden, f"{num_layers} layers x hidden size {hidden}")
    flat = s.reshape(n, num_layers * hidden)
    votes, means = _votes_and_means(flat, k_total, lowest)
    chosen = _winners(votes, means, k_total, lowest)
    layers = [[] for _ in range(num_layers)]
    for flat_index in sorted(int(i) for i in chosen):
        layers[flat_index // hidden].append(flat_index % hidden)
    log.info("%s selection: %d rows over %d layers (per layer: %s)", strategy, k_total, num_layers,
             ", ".join(str(len(x)) for x in layers))
    return layers


def save_nodes(path: str | Path, layers: list[list[int]], q: float, strategy: str,
               extra: dict[str, Any] | None = None) -> Path:
    """Write `{"q", "strategy", ...extra, "layers"}` as JSON, atomically."""
    extra = dict(extra or {})
    clash = [key for key in _RESERVED if key in extra]
    if clash:
        raise KnowpackError(f"extra node-file keys {clash} would overwrite {', '.join(_RESERVED)}")
    obj: dict[str, Any] = {"q": q, "strategy": strategy, **extra,
                           "layers": [[int(i) for i in layer] for layer in layers]}
    return write_json(path, obj)


def load_nodes(path: str | Path) -> dict[str, Any]:
    """Read and validate a node file written by `save_nodes`; returns its dict (`layers`: sorted lists)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("node file not found (run `knowpack select` first)", path=str(path))
    try:
        obj = read_json(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"invalid JSON: {exc}", path=str(path)) from None
    if not isinstance(obj, dict):
        raise InputError("a node file must hold a JSON object", path=str(path))
    for key in _RESERVED:
        if key not in obj:
            raise InputError(f"missing field '{key}'", path=str(path), field=key)
    if obj["strategy"] not in STRATEGIES:
        raise InputError(f"unknown strategy '{obj['strategy']}'; one of: {', '.join(STRATEGIES)}",
                         path=str(path), field="strategy")
    q = obj["q"]
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 100:
        raise InputError(f"'q' must be a percentage in (0, 100], got {q!r}", path=str(path), field="q")
    layers = obj["layers"]
    if not isinstance(layers, list) or not all(isinstance(layer, list) for layer in layers):
        raise InputError("'layers' must be a list of index lists", path=str(path), field="layers")
    for i, layer in enumerate(layers):
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layer) or \
                any(a >= b for a, b in zip(layer, layer[1:])):
            raise InputError(f"layer {i}: indices must be non-negative integers, sorted and unique",
                             path=str(path), field="layers")
    return obj
