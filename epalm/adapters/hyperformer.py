"""Hyperformer (Karimi Mahabadi et al., 2021; its "++" form, one hypernetwork for every layer):
the bottleneck adapters' weights are generated from a task embedding and an embedding of the
site (layer x sublayer) by a small shared network, so tasks share the generator and each gets
adapters of its own. The generators of the up-projection start at zero: the adapted LM starts
out computing exactly what the frozen LM computes."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from epalm.adapters.base import AdapterContext, SublayerAdapters, register_adapter
from epalm.adapters.bottleneck import activation as activation_fn
from epalm.adapters.bottleneck import bottleneck_width


@register_adapter("hyperformer")
class HyperformerAdapters(SublayerAdapters):
    def __init__(
        self,
        context: AdapterContext,
        reduction_factor: int = 8,
        embedding_dim: int = 64,
        projector_hidden: int = 128,
        activation: str = "gelu_new",
    ) -> None:
        super().__init__(context)
        d, m = self.hidden_size, bottleneck_width(self.hidden_size, reduction_factor)
        self.width, self.bottleneck = d, m
        # shared=true: one task embedding for every task (one adapter set, generated)
        self.task_embedding = nn.Embedding(self.sets, embedding_dim)
        self.site_embedding = nn.Embedding(len(self.sites), embedding_dim)
        self.projector = nn.Sequential(
            nn.Linear(2 * embedding_dim, projector_hidden),
            nn.ReLU(),
            nn.Linear(projector_hidden, embedding_dim),
        )
        self.act = activation_fn(activation)
        self.down_weight = nn.Linear(embedding_dim, m * d)
        self.down_bias = nn.Linear(embedding_dim, m)
        self.up_weight = nn.Linear(embedding_dim, d * m)
        self.up_bias = nn.Linear(embedding_dim, d)
        for generator in (self.up_weight, self.up_bias):
            nn.init.zeros_(generator.weight)
            nn.init.zeros_(generator.bias)

    def delta(self, hidden: torch.Tensor, site: int) -> torch.Tensor:
        device = self.site_embedding.weight.device
        task = self.task_embedding(torch.tensor(self.set_index(), device=device))
        where = self.site_embedding(torch.tensor(site, device=device))
        code = self.projector(torch.cat([task, where]))
        down = self.down_weight(code).view(self.bottleneck, self.width)
        up = self.up_weight(code).view(self.width, self.bottleneck)
        return F.linear(
            self.act(F.linear(hidden, down, self.down_bias(code))), up, self.up_bias(code)
        )
