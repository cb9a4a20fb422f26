"""Compacter (Karimi Mahabadi et al., 2021): bottleneck adapters whose projections are
parameterised hypercomplex multiplication (PHM) layers, W = sum_i A_i (x) B_i (Kronecker
products of n x n "rules" A_i and (in/n) x (out/n) matrices B_i), each B_i optionally factorised
to rank r. The rules are shared by every layer of an adapter set, as Compacter shares them."""

from __future__ import annotations

import torch
from torch import nn

from epalm.adapters.base import AdapterContext, SublayerAdapters, register_adapter
from epalm.adapters.bottleneck import activation, bottleneck_width


def phm_rule(n: int) -> nn.Parameter:
    rule = torch.empty(n, n, n)
    for slice_ in rule:
        nn.init.xavier_uniform_(slice_)
    return nn.Parameter(rule)


class PHMLinear(nn.Module):
    """``x @ W + b`` with ``W = sum_i kron(rule[i], B[i])``; ``B[i] = left[i] @ right[i]`` when
    ``rank`` is set. ``zero`` starts W (and b) at zero."""

    def __init__(
        self, in_features: int, out_features: int, n: int, rank: int | None, zero: bool = False
    ) -> None:
        super().__init__()
        for size, what in ((in_features, "input"), (out_features, "output")):
            if size % n:
                raise ValueError(f"compacter: the {what} width {size} is not divisible by n={n}")
        p, q = in_features // n, out_features // n
        self.n = n
        if rank:
            self.left = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n, p, rank)))
            self.right = nn.Parameter(torch.zeros(n, rank, q))
            if not zero:
                nn.init.xavier_uniform_(self.right)
        else:
            self.left = nn.Parameter(torch.zeros(n, p, q))
            if not zero:
                nn.init.xavier_uniform_(self.left)
            self.right = None
        self.bias = nn.Parameter(torch.zeros(out_features))

    def weight(self, rule: torch.Tensor) -> torch.Tensor:
        factors = self.left if self.right is None else self.left @ self.right  # [n, p, q]
        kron = torch.einsum("iab,ixy->axby", rule, factors)  # [n, p, n, q]
        return kron.reshape(self.n * factors.shape[1], self.n * factors.shape[2])

    def forward(self, x: torch.Tensor, rule: torch.Tensor) -> torch.Tensor:
        return x @ self.weight(rule) + self.bias


class CompacterSite(nn.Module):
    def __init__(self, width: int, bottleneck: int, n: int, rank: int | None, act: str) -> None:
        super().__init__()
        self.down = PHMLinear(width, bottleneck, n, rank)
        self.act = activation(act)
        self.up = PHMLinear(bottleneck, width, n, rank, zero=True)

    def forward(self, hidden: torch.Tensor, rule: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(hidden, rule)), rule)


class CompacterSet(nn.Module):
    def __init__(self, sites: int, width: int, bottleneck: int, n: int, rank, act: str) -> None:
        super().__init__()
        self.rule = phm_rule(n)
        self.sites = nn.ModuleList(
            CompacterSite(width, bottleneck, n, rank, act) for _ in range(sites)
        )


@register_adapter("compacter")
class CompacterAdapters(SublayerAdapters):
    def __init__(
        self,
        context: AdapterContext,
        reduction_factor: int = 8,
        phm_dim: int = 2,
        phm_rank: int | None = 1,
        activation: str = "gelu_new",
    ) -> None:
        super().__init__(context)
        width = bottleneck_width(self.hidden_size, reduction_factor)
        self.adapters = nn.ModuleList(
            CompacterSet(len(self.sites), self.hidden_size, width, phm_dim, phm_rank, activation)
            for _ in range(self.sets)
        )

    def delta(self, hidden: torch.Tensor, site: int) -> torch.Tensor:
        chosen = self.adapters[self.set_index()]
        return chosen.sites[site](hidden, chosen.rule)
