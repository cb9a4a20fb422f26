"""eP-ALM's trainable parts: a projection of the encoder's last levels and a soft prompt."""

from __future__ import annotations

import torch
from torch import nn


class LevelProjection(nn.Module):
    """Projects the summaries of the encoder's last ``levels`` layers into the LM's width.

    One ``Linear(encoder_dim, lm_dim)`` per level (eP-ALM's default) or one shared by all
    levels (its ``shared_connector``). Input ``[batch, levels, encoder_dim]``.
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


class SoftPrompt(nn.Module):
    """``num_tokens`` learned input embeddings, optionally reparametrised by a small MLP.

    Initialised from N(0, init_std): a zero prompt gives NaN gradients through RMSNorm.
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        mlp_hidden: int | None = None,
        init_std: float = 0.02,
    ):
        super().__init__()
        self.num_tokens = num_tokens
        self.embedding = nn.Embedding(num_tokens, dim)
        nn.init.normal_(self.embedding.weight, std=init_std)
        self.mlp = None
        if mlp_hidden is not None:
            self.mlp = nn.Sequential(
                nn.Linear(dim, mlp_hidden), nn.Tanh(), nn.Linear(mlp_hidden, dim)
            )

    def forward(self) -> torch.Tensor:
        """The prompt embeddings ``[num_tokens, dim]``."""
        prompt = self.embedding.weight
        return prompt if self.mlp is None else self.mlp(prompt)
