"""The connector: what turns one slot's frozen perception into the LM's perceptual tokens.

A connector reads either the encoder's per-level *summaries* ``[batch, levels, encoder_dim]``
(eP-ALM) or its per-level *tokens* ``{"tokens": [batch, levels, T, encoder_dim], "mask": [batch,
T]}`` (``reads = "tokens"``), and returns ``SlotTokens``: K tokens per level in the LM's width,
with a mask. ``levels`` is how many of the encoder's last levels it reads, and how many sets of
tokens it injects (each level feeds its share of the injection layers, as in eP-ALM).
Connectors are chosen by name from a registry, so a new one is a new file, not a new ``if``.
"""

from __future__ import annotations

import difflib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from epalm.injection import SlotTokens

Features = torch.Tensor | Mapping[str, torch.Tensor]
# the prompt's text for connectors that fuse it: (embeddings [batch, L, lm_dim], mask [batch, L])
TextContext = tuple[torch.Tensor, torch.Tensor]
READS = ("summaries", "tokens")

C = TypeVar("C", bound=type["Connector"])
_REGISTRY: dict[str, type[Connector]] = {}


class Connector(nn.Module, ABC):
    """Frozen perception of one slot -> ``SlotTokens`` ``[batch, levels, K, lm_dim]``."""

    registry_name: ClassVar[str] = ""
    #: what it reads from the perceiver: "summaries" or "tokens"
    reads: ClassVar[str] = "summaries"
    #: whether it also reads the prompt's text (``TextContext``)
    uses_text: ClassVar[bool] = False

    levels: int
    #: K, the tokens it adds to the LM per slot; None: as many as the perceiver gives
    num_tokens: int | None

    @abstractmethod
    def forward(self, features: Features, text: TextContext | None = None) -> SlotTokens:
        """One batch of one slot's features -> its perceptual tokens."""


def register_connector(name: str) -> Callable[[C], C]:
    """Class decorator: make a ``Connector`` subclass buildable by ``connector.name=<name>``."""

    def add(cls: C) -> C:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a connector named {name!r} is already registered")
        if cls.reads not in READS:
            raise ValueError(f"{cls.__name__}.reads must be one of {READS}, not {cls.reads!r}")
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls

    return add


def known_connectors() -> list[str]:
    return sorted(_REGISTRY)


def connector_class(name: str) -> type[Connector]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=2)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"unknown connector {name!r}.{hint} Known: {', '.join(known_connectors())}")
    return _REGISTRY[name]


def build_connector(name: str, **kwargs: Any) -> Connector:
    """A registered connector, built with ``encoder_dim``, ``lm_dim``, ``levels`` and its own
    keyword arguments; an unknown argument is an error naming the ones it takes."""
    cls = connector_class(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"connector {name!r} ({cls.__name__}): {err}") from None


class PoolingConnector(Connector):
    """A connector that turns each level's tokens into K with one module shared by the levels
    (``pool``), then projects them per level (``self.projection``): the levels become samples of
    their own for ``pool``, and the K tokens are all real."""

    reads = "tokens"
    projection: nn.Module

    @abstractmethod
    def pool(
        self, tokens: torch.Tensor, mask: torch.Tensor, text: TextContext | None, levels: int
    ) -> torch.Tensor:
        """``[batch * levels, T, dim]`` tokens and ``[batch * levels, T]`` mask (each sample's
        levels in a row) -> ``[batch * levels, K, width]``."""

    def forward(self, features: Features, text: TextContext | None = None) -> SlotTokens:
        tokens, mask = token_inputs(features, self.levels)
        batch, levels = tokens.shape[:2]
        pooled = self.pool(tokens.flatten(0, 1), mask.repeat_interleave(levels, 0), text, levels)
        out = self.projection(pooled.unflatten(0, (batch, levels)))
        return SlotTokens(out, all_real(batch, out.shape[2], out))


# --- pieces connectors share -------------------------------------------------------------------
class LevelProjection(nn.Module):
    """Projects features of the encoder's last ``levels`` layers into the LM's width.

    One ``Linear(encoder_dim, lm_dim)`` per level (eP-ALM's default) or one shared by all
    levels (its ``shared_connector``). Input ``[batch, levels, ..., encoder_dim]``.
    """

    def __init__(self, encoder_dim: int, lm_dim: int, levels: int = 6, shared: bool = False):
        super().__init__()
        if levels < 1:
            raise ValueError(f"connector levels must be at least 1, got {levels}")
        self.levels = levels
        self.shared = shared
        self.projections = nn.ModuleList(
            nn.Linear(encoder_dim, lm_dim) for _ in range(1 if shared else levels)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[1] != self.levels:
            raise ValueError(
                f"expected {self.levels} levels of features, got shape {tuple(features.shape)}"
            )
        if self.shared:
            return self.projections[0](features)
        return torch.stack([proj(features[:, i]) for i, proj in enumerate(self.projections)], dim=1)


def token_inputs(features: Features, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [batch, levels, T, D], mask [batch, T] bool)`` from a "tokens" connector's
    input, checked, with the last ``levels`` levels kept."""
    if not isinstance(features, Mapping) or {"tokens", "mask"} - set(features):
        found = type(features).__name__ if not isinstance(features, Mapping) else sorted(features)
        raise TypeError(
            f"this connector reads token features {{'tokens', 'mask'}}, got {found}: are these "
            "cached summaries from another connector?"
        )
    tokens, mask = features["tokens"], features["mask"]
    if (
        tokens.ndim != 4
        or tokens.shape[1] < levels
        or mask.shape
        != (
            tokens.shape[0],
            tokens.shape[2],
        )
    ):
        raise ValueError(
            f"token features must be [batch, >= {levels} levels, T, D] with a [batch, T] mask; "
            f"got {tuple(tokens.shape)} and {tuple(mask.shape)}"
        )
    return tokens[:, -levels:].float(), mask.bool()


def all_real(batch: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """A mask of ``width`` real tokens per sample."""
    return torch.ones(batch, width, dtype=torch.long, device=like.device)


def sinusoid(length: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """The transformer's fixed sinusoidal encoding of positions ``0..length-1``, ``[length, dim]``:
    token order for perceivers whose tokens carry none of their own (frames of a clip)."""
    position = torch.arange(length, dtype=torch.float32, device=like.device)[:, None]
    rate = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=like.device) * (-math.log(1e4) / dim)
    )
    table = torch.zeros(length, dim, device=like.device)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: dim // 2])
    return table.to(like.dtype)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over ``dim`` where ``mask`` (broadcastable, True: keep) holds; a row with nothing
    to keep (an empty prompt) gives zeros, not NaN."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=dim) * mask.any(dim=dim, keepdim=True)
