"""``token-learner``: K learned attention maps pool the encoder's tokens into K (TokenLearner)."""

from __future__ import annotations

import torch
from torch import nn

from epalm.connectors.base import (
    LevelProjection,
    PoolingConnector,
    TextContext,
    masked_softmax,
    register_connector,
    sinusoid,
)


class TokenLearner(nn.Module):
    """TokenLearner (Ryoo et al., 2021; its v1.1): an MLP gives each token K scores, a softmax
    over the tokens turns each score column into an attention map, and each of the K outputs is
    its map's weighted sum of the (normalised) tokens. Over a clip's frames x patches the maps
    are spatio-temporal. ``[batch, T, dim]`` with mask ``[batch, T]`` -> ``[batch, K, dim]``."""

    def __init__(self, dim: int, num_tokens: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.norm = nn.LayerNorm(dim)
        self.scores = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, num_tokens)
        )

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        normed = self.norm(tokens)
        maps = masked_softmax(self.scores(normed), mask[..., None], dim=1)  # [batch, T, K]
        return maps.transpose(1, 2) @ normed


class OrderedTokens(nn.Module):
    """Adds each token's index (sinusoid, through a learned gate that starts closed) before
    pooling: patch tokens know where they are, but the frames of a clip know not when."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.gate * sinusoid(tokens.shape[-2], tokens.shape[-1], tokens)


@register_connector("token-learner")
class TokenLearnerConnector(PoolingConnector):
    """Each level's tokens pooled into K by TokenLearner's maps (one learner for all levels),
    then projected into the LM's width per level: K tokens per level, whatever the input's
    length."""

    def __init__(
        self,
        encoder_dim: int,
        lm_dim: int,
        levels: int = 1,
        shared: bool = False,
        num_tokens: int = 8,
        hidden: int | None = None,
    ):
        super().__init__()
        self.levels, self.num_tokens = levels, num_tokens
        self.order = OrderedTokens()
        self.learner = TokenLearner(encoder_dim, num_tokens, hidden)
        self.projection = LevelProjection(encoder_dim, lm_dim, levels, shared)

    def pool(
        self, tokens: torch.Tensor, mask: torch.Tensor, text: TextContext | None, levels: int
    ) -> torch.Tensor:
        return self.learner(self.order(tokens), mask)
