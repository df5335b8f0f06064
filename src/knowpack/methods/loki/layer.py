"""The LoKI layer: a frozen `down_proj` whose selected rows train as a parameter of their own.

For input x the output is `W x` with the coordinates in S replaced by `W_S x`, where `W_S` (|S| x
d_ff) is the trainable parameter. Autograd then computes the weight gradient of `W_S` from the
selected output-gradient columns only (g[..., S]^T x), and no gradient or optimizer state exists for
the other D - |S| rows. LoKI* (`lora_r > 0`) keeps `W_S` frozen and trains a low-rank update of it,
`W_S + scale * A B` with A: |S| x r (zeros at start) and B: r x d_ff.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LokiLinear(nn.Module):
    def __init__(self, base: nn.Linear, rows: list[int], *, lora_r: int = 0, lora_alpha: float = 0.0,
                 lora_dropout: float = 0.0):
        super().__init__()
        if base.bias is not None:
            raise ValueError("LoKI expects down_proj without bias")
        self.base = base
        self.base.weight.requires_grad_(False)
        self.register_buffer("rows", torch.tensor(sorted(rows), dtype=torch.long, device=base.weight.device),
                             persistent=False)
        selected = base.weight.detach()[self.rows].clone()
        self.lora_r = lora_r
        if lora_r:
            self.register_buffer("rows_weight", selected, persistent=False)
            self.lora_A = nn.Parameter(torch.zeros(len(rows), lora_r, dtype=selected.dtype, device=selected.device))
            self.lora_B = nn.Parameter(torch.empty(lora_r, selected.shape[1], dtype=selected.dtype,
                                                   device=selected.device))
            nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))
            self.scale = (lora_alpha or lora_r) / lora_r
            self.dropout = nn.Dropout(lora_dropout) if lora_dropout else nn.Identity()
        else:
            self.rows_weight = nn.Parameter(selected)

    @property
    def weight(self) -> torch.Tensor:  # what the base module's weight has become, for code that reads it
        return self.merged_weight()

    def selected_weight(self) -> torch.Tensor:
        if self.lora_r:
            return self.rows_weight + self.scale * (self.lora_A @ self.lora_B)
        return self.rows_weight

    def merged_weight(self) -> torch.Tensor:
        w = self.base.weight.detach().clone()
        w[self.rows] = self.selected_weight().detach().to(w.dtype)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.base.weight)
        if self.lora_r:
            sel = F.linear(x, self.rows_weight) + self.scale * F.linear(F.linear(self.dropout(x), self.lora_B),
                                                                         self.lora_A)
        else:
            sel = F.linear(x, self.rows_weight)
        # In place: `out` is a fresh tensor that F.linear's backward does not need, so the selected
        # coordinates are overwritten without copying the whole output.
        return out.index_copy_(-1, self.rows, sel.to(out.dtype))

    def to_linear(self) -> nn.Linear:
        """The base module with the trained rows written into its weight."""
        with torch.no_grad():
            self.base.weight[self.rows] = self.selected_weight().to(self.base.weight.dtype)
        return self.base
