"""LoKI and LoKI* as registered methods: implant new facts into the least important FFN rows.

`loki` trains the selected rows of every `down_proj.weight`; `loki_lora` (LoKI*) trains a low-rank
update of those rows. The nodes (per-layer row indices) come from KVA + selection, computed by the
run (or given as `train.loki.nodes`). Adapter format (SPEC §5.1): `loki_config.json` with the base
model, q, strategy, axis, the per-layer rows and the method version, plus `loki_model.safetensors`
with the trained rows (or the LoRA factors) per layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from knowpack import __version__
from knowpack.errors import KnowpackError
from knowpack.io import write_json
from knowpack.methods import Method, register
from knowpack.methods.loki.arch import decoder_layers, down_projs
from knowpack.methods.loki.layer import LokiLinear
from knowpack.methods.loki.select import STRATEGIES

FORMAT_VERSION = 1


@dataclass
class LokiSettings:
    q: float | None = field(default=None, metadata={
        "min": 0, "max": 100, "help": "percent of rows per layer to train; None: 10 for loki, 30 for loki_lora"})
    strategy: str = field(default="layer_balanced_lowest", metadata={"choices": list(STRATEGIES)})
    axis: Literal["hidden"] = field(default="hidden", metadata={"help": "rows of down_proj (hidden coordinates)"})
    nodes: str | None = field(default=None, metadata={"help": "nodes.json from `knowpack select`; None: attribute "
                                                                "and select in the run"})
    scores: str | None = field(default=None, metadata={"help": "scores from `knowpack attribute` to select from"})
    attribution_data: str = field(default="world", metadata={
        "help": "MMLU-format or prompt JSONL for KVA; 'world': the embedded world's attribution prompts "
                "(questions of its skills and known facts that its base model answers, disjoint from every "
                "benchmark item scored for damage)"})
    attribution_limit: int | None = field(default=None, metadata={"min": 1, "help": "use a seeded sample of N prompts"})
    kva_method: Literal["fast", "reference"] = "fast"
    steps: int = field(default=7, metadata={"min": 1, "help": "Riemann steps of the integrated gradients"})
    r: int = field(default=32, metadata={"min": 1, "help": "LoKI* rank"})
    alpha: float = field(default=32.0, metadata={"min": 0, "help": "LoKI* scale numerator (scale = alpha / r)"})
    dropout: float = field(default=0.0, metadata={"min": 0, "max": 1, "help": "LoKI* dropout"})
    seed: int = 0


class Loki(Method):
    adapter_marker = "loki_config.json"
    default_lr = 1e-5
    settings_key = "loki"

    def __init__(self, name: str, lora: bool, default_q: float, summary: str):
        self.name, self.lora, self.default_q, self.summary = name, lora, default_q, summary

    def q(self, settings: LokiSettings) -> float:
        return settings.q if settings.q is not None else self.default_q

    def prepare(self, model: nn.Module, settings: LokiSettings, *, nodes: list[list[int]] | None = None,
                **context: Any) -> nn.Module:
        if nodes is None:
            raise KnowpackError("LoKI needs selected rows: set train.loki.nodes to a nodes.json from "
                                "`knowpack select`, or run it through `knowpack train`/`run`, which select them")
        layers = decoder_layers(model)
        _check_nodes(nodes, model)
        for p in model.parameters():
            p.requires_grad_(False)
        for layer, rows in zip(layers, nodes):
            layer.mlp.down_proj = LokiLinear(layer.mlp.down_proj, rows, lora_r=settings.r if self.lora else 0,
                                             lora_alpha=settings.alpha, lora_dropout=settings.dropout)
        model._knowpack_loki = {"q": self.q(settings), "strategy": settings.strategy, "axis": settings.axis,
                                "layers": [sorted(int(i) for i in rows) for rows in nodes], "r": settings.r,
                                "alpha": settings.alpha}
        return model

    def save(self, model: nn.Module, out_dir: Path, *, base_model: str) -> None:
        from safetensors.torch import save_file

        info = getattr(model, "_knowpack_loki", None)
        if info is None:
            raise KnowpackError("this model was not prepared for LoKI; nothing to save")
        tensors: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(decoder_layers_any(model)):
            mod = layer.mlp.down_proj
            if self.lora:
                tensors[f"layers.{i}.lora_A"] = mod.lora_A.detach().cpu().contiguous()
                tensors[f"layers.{i}.lora_B"] = mod.lora_B.detach().cpu().contiguous()
            else:
                tensors[f"layers.{i}.rows"] = mod.rows_weight.detach().cpu().contiguous()
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out_dir / "loki_model.safetensors"))
        write_json(out_dir / "loki_config.json", {
            "method": self.name, "base_model_name_or_path": base_model, "format_version": FORMAT_VERSION,
            "knowpack_version": __version__, "q": info["q"], "strategy": info["strategy"], "axis": info["axis"],
            "lora_r": info["r"] if self.lora else None, "lora_alpha": info["alpha"] if self.lora else None,
            "layers": info["layers"]})

    def load(self, base: nn.Module, adapter_dir: Path) -> nn.Module:
        """Apply the adapter onto `base`: the selected rows are replaced, so the result is a plain model."""
        from safetensors.torch import load_file

        cfg = json.loads((adapter_dir / "loki_config.json").read_text())
        if cfg.get("format_version", 0) > FORMAT_VERSION:
            raise KnowpackError(f"{adapter_dir}/loki_config.json has format_version {cfg['format_version']}; "
                                f"this knowpack reads up to {FORMAT_VERSION}; upgrade knowpack")
        method = cfg.get("method", "loki")
        nodes = cfg["layers"]
        _check_nodes(nodes, base, where=str(adapter_dir / "loki_config.json"))
        tensors = load_file(str(adapter_dir / "loki_model.safetensors"))
        with torch.no_grad():
            for i, (down, rows) in enumerate(zip(down_projs(base), nodes)):
                idx = torch.tensor(rows, dtype=torch.long, device=down.weight.device)
                w = down.weight
                if method == "loki_lora":
                    scale = (cfg.get("lora_alpha") or cfg["lora_r"]) / cfg["lora_r"]
                    delta = tensors[f"layers.{i}.lora_A"].float() @ tensors[f"layers.{i}.lora_B"].float()
                    w[idx] = (w[idx].float() + scale * delta.to(w.device)).to(w.dtype)
                else:
                    new = tensors[f"layers.{i}.rows"]
                    if tuple(new.shape) != (len(rows), w.shape[1]):
                        raise KnowpackError(f"{adapter_dir}: layer {i} rows have shape {tuple(new.shape)}, "
                                            f"expected {(len(rows), w.shape[1])}; wrong base model?")
                    w[idx] = new.to(w.device, w.dtype)
        return base

    def merge(self, model: nn.Module) -> nn.Module:
        for layer in decoder_layers_any(model):
            if isinstance(layer.mlp.down_proj, LokiLinear):
                layer.mlp.down_proj = layer.mlp.down_proj.to_linear()
        if hasattr(model, "_knowpack_loki"):
            del model._knowpack_loki
        return model


def decoder_layers_any(model: nn.Module):
    """Decoder layers, whether their down_proj is a Linear or a LokiLinear."""
    return model.model.layers if hasattr(model, "model") else model.layers


def _check_nodes(nodes: list[list[int]], model: nn.Module, where: str = "nodes") -> None:
    downs = [layer.mlp.down_proj for layer in decoder_layers_any(model)]
    if len(nodes) != len(downs):
        raise KnowpackError(f"{where}: {len(nodes)} layer lists for a model with {len(downs)} layers; "
                            "were the nodes selected on another model?")
    for i, (rows, down) in enumerate(zip(nodes, downs)):
        d = down.base.weight.shape[0] if isinstance(down, LokiLinear) else down.weight.shape[0]
        bad = [r for r in rows if not 0 <= int(r) < d]
        if bad or len(set(rows)) != len(rows):
            raise KnowpackError(f"{where}: layer {i} has row indices out of range [0, {d}) or repeated: "
                                f"{(bad or rows)[:5]}")


register(Loki("loki", lora=False, default_q=10, summary="LoKI: train the least important down_proj rows"))
register(Loki("loki_lora", lora=True, default_q=30, summary="LoKI*: LoRA on the least important down_proj rows"))
