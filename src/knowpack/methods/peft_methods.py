"""LoRA, DoRA and PiSSA through PEFT (the field's library; nothing here re-implements them).

Adapters are saved in PEFT's own format (`adapter_config.json`, `adapter_model.safetensors`), so
`PeftModel.from_pretrained(base, DIR)` loads them outside knowpack too. PiSSA changes the base
weights when it initialises; its adapter is saved converted to an ordinary LoRA against the
original base (PEFT's weight conversion), so it loads onto the unmodified base model.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from knowpack.errors import KnowpackError
from knowpack.methods import Method, register

TARGETS = ("gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    """Adapter shape for lora, dora and pissa (paper defaults for the knowledge-packing study)."""

    r: int = field(default=1, metadata={"min": 1, "help": "adapter rank"})
    alpha: float = field(default=2.0, metadata={"min": 0, "help": "scaling numerator (scale = alpha / r)"})
    dropout: float = field(default=0.1, metadata={"min": 0, "max": 1})
    targets: list[str] = field(default_factory=lambda: list(TARGETS),
                               metadata={"help": "module names to adapt"})
    rslora: bool = field(default=False, metadata={"help": "rank-stabilised scaling alpha / sqrt(r)"})


class PeftLoraFamily(Method):
    adapter_marker = "adapter_config.json"
    default_lr = 1e-3
    settings_key = "lora"
    variant: str = "lora"

    def __init__(self, name: str, variant: str, summary: str):
        self.name, self.variant, self.summary = name, variant, summary
        self._init_dirs: dict[int, str] = {}

    def _config(self, settings: LoraSettings):
        from peft import LoraConfig

        return LoraConfig(
            r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
            target_modules=list(settings.targets), use_rslora=settings.rslora,
            use_dora=self.variant == "dora", init_lora_weights="pissa" if self.variant == "pissa" else True,
            bias="none", task_type="CAUSAL_LM",
        )

    def prepare(self, model: nn.Module, settings: LoraSettings, **context: Any) -> nn.Module:
        from peft import get_peft_model

        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in settings.targets if t not in present]
        if missing:
            raise KnowpackError(f"lora.targets: {', '.join(missing)} not found in the model; "
                                f"its linear layers include {', '.join(sorted(_linear_names(model)))}")
        if self.variant == "pissa" and settings.dropout != 0:
            # PiSSA's weight conversion is exact only without dropout between the factors; PEFT
            # warns about it, so the choice is made explicit here.
            settings = LoraSettings(**{**settings.__dict__, "dropout": 0.0})
        peft_model = get_peft_model(model, self._config(settings))
        if self.variant == "pissa":
            # Keep the initial factors: saving converts the trained PiSSA adapter to a LoRA that
            # applies to the *original* base weights.
            init_dir = tempfile.mkdtemp(prefix="knowpack-pissa-init-")
            cfg = peft_model.peft_config["default"]
            cfg.init_lora_weights = True
            peft_model.save_pretrained(init_dir)
            cfg.init_lora_weights = "pissa"
            self._init_dirs[id(peft_model)] = init_dir
        return peft_model

    def save(self, model: nn.Module, out_dir: Path, *, base_model: str) -> None:
        model.peft_config["default"].base_model_name_or_path = base_model
        init_dir = self._init_dirs.pop(id(model), None)
        if init_dir:
            try:
                model.save_pretrained(str(out_dir), path_initial_model_for_weight_conversion=init_dir)
            finally:
                shutil.rmtree(init_dir, ignore_errors=True)
        else:
            model.save_pretrained(str(out_dir))

    def load(self, base: nn.Module, adapter_dir: Path) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(adapter_dir))

    def merge(self, model: nn.Module) -> nn.Module:
        init_dir = self._init_dirs.pop(id(model), None)
        if init_dir:
            shutil.rmtree(init_dir, ignore_errors=True)
        return model.merge_and_unload()


def _linear_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, nn.Linear)}


register(PeftLoraFamily("lora", "lora", "PEFT LoRA on gate/up/down_proj (r=1, alpha=2 by default)"))
register(PeftLoraFamily("dora", "dora", "PEFT DoRA: LoRA with a learned magnitude vector"))
register(PeftLoraFamily("pissa", "pissa", "PEFT PiSSA: LoRA initialised from the principal singular vectors"))
