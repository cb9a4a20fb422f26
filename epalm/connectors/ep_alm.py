"""``ep-alm``: eP-ALM's connector, one token per level, a projection of each level's summary."""

from __future__ import annotations

import torch

from epalm.connectors.base import (
    Connector,
    Features,
    LevelProjection,
    TextContext,
    all_real,
    register_connector,
)
from epalm.injection import SlotTokens


@register_connector("ep-alm")
class EPALMConnector(LevelProjection, Connector):
    """The summaries ([CLS] or mean) of the encoder's last ``levels`` layers, each projected by
    its own ``Linear`` (or one shared): K = 1 token per level. (A ``LevelProjection`` itself, so
    its weights keep the names of checkpoints saved before connectors were chosen by name.)"""

    reads = "summaries"
    num_tokens = 1

    def forward(self, features: Features, text: TextContext | None = None) -> SlotTokens:
        if not isinstance(features, torch.Tensor) or features.ndim != 3:
            found = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
            raise TypeError(
                f"the ep-alm connector reads summaries [batch, levels, dim], got {found}"
            )
        tokens = super().forward(features[:, -self.levels :].float())[:, :, None]
        return SlotTokens(tokens, all_real(tokens.shape[0], 1, tokens))
