"""Full fine-tuning: every weight trains; the "adapter" is the whole model in Hugging Face format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from knowpack.methods import Method, register


class FullFineTuning(Method):
    name = "full"
    adapter_marker = "config.json"
    default_lr = 1e-5
    summary = "full fine-tuning of all weights (baseline)"

    def prepare(self, model: nn.Module, settings: Any = None, **context: Any) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model: nn.Module, out_dir: Path, *, base_model: str) -> None:
        model.save_pretrained(str(out_dir), safe_serialization=True)

    def load(self, base: nn.Module, adapter_dir: Path) -> nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(adapter_dir), dtype=next(base.parameters()).dtype).to(
            next(base.parameters()).device)

    def merge(self, model: nn.Module) -> nn.Module:
        return model


register(FullFineTuning())
