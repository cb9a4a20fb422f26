"""``all-tokens``: every token of the encoder's last levels, projected (LLaVA's way)."""

from __future__ import annotations

from epalm.connectors.base import (
    Connector,
    Features,
    LevelProjection,
    TextContext,
    register_connector,
    token_inputs,
)
from epalm.injection import SlotTokens


@register_connector("all-tokens")
class AllTokens(Connector):
    """Each level's tokens (patches and [CLS], frames x patches, audio frames) projected into the
    LM's width and placed in the slot: the accuracy reference, with the most LM tokens and FLOPs.
    Padded tokens (shorter audio in a batch) stay masked."""

    reads = "tokens"

    def __init__(self, encoder_dim: int, lm_dim: int, levels: int = 1, shared: bool = False):
        super().__init__()
        self.levels, self.num_tokens = levels, None
        self.projection = LevelProjection(encoder_dim, lm_dim, levels, shared)

    def forward(self, features: Features, text: TextContext | None = None) -> SlotTokens:
        tokens, mask = token_inputs(features, self.levels)
        return SlotTokens(self.projection(tokens), mask.long())
