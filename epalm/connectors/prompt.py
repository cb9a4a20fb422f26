"""The soft prompt: learned input embeddings before the text (eP-ALM's prompt tuning)."""

from __future__ import annotations

import torch
from torch import nn


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
