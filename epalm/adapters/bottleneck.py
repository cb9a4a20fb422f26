"""Bottleneck adapters (Houlsby et al.; VL-Adapter's "Adapter"): down-projection to d / r, an
activation, up-projection, added to the sublayer's output. The up-projection starts at zero, so
the adapted LM starts out computing exactly what the frozen LM computes."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from epalm.adapters.base import AdapterContext, SublayerAdapters, register_adapter


def bottleneck_width(hidden_size: int, reduction_factor: int) -> int:
    if reduction_factor < 1 or hidden_size < reduction_factor:
        raise ValueError(
            f"adapter reduction_factor={reduction_factor} must be between 1 and the LM's width "
            f"({hidden_size})"
        )
    return hidden_size // reduction_factor


def activation(name: str) -> nn.Module:
    if name not in ACT2FN:
        raise ValueError(f"adapter activation {name!r} is not one of {', '.join(sorted(ACT2FN))}")
    return ACT2FN[name]


class Bottleneck(nn.Module):
    def __init__(self, width: int, bottleneck: int, act: str) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.act = activation(act)
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(hidden)))


@register_adapter("bottleneck")
class BottleneckAdapters(SublayerAdapters):
    """One bottleneck per site (layer x sublayer) and per adapter set."""

    def __init__(
        self, context: AdapterContext, reduction_factor: int = 8, activation: str = "gelu_new"
    ) -> None:
        super().__init__(context)
        width = bottleneck_width(self.hidden_size, reduction_factor)
        self.adapters = nn.ModuleList(
            nn.ModuleList(Bottleneck(self.hidden_size, width, activation) for _ in self.sites)
            for _ in range(self.sets)
        )

    def delta(self, hidden: torch.Tensor, site: int) -> torch.Tensor:
        return self.adapters[self.set_index()][site](hidden)
