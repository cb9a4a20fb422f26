"""``joint-fusion``: Joint Adaptive Representations (Piergiovanni & Angelova, 2023), from the paper.

The perceptual tokens and the prompt's text tokens are each reduced by TokenLearner, fused by a
small transformer block over the joint set, then the joint set is reduced again and fused
again: a compact joint representation of K tokens that the LM receives in the slot, in place
of hundreds of patch tokens. No public code exists; this follows the paper's description.

The text it fuses is the prompt (a VQA question), never a target: the model hands it the
prompt's embeddings only (``EPALM`` refuses ``loss_on_prompt`` with this connector, where the
prompt is itself a target). The prompt's tokens may thus see later prompt tokens through the
slot, but no target token ever sees a later one.
"""

from __future__ import annotations

import torch
from torch import nn

from epalm.connectors.base import (
    LevelProjection,
    PoolingConnector,
    TextContext,
    register_connector,
)
from epalm.connectors.token_learner import OrderedTokens, TokenLearner


def fusion_block(width: int, heads: int) -> nn.Module:
    return nn.TransformerEncoderLayer(
        width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )


@register_connector("joint-fusion")
class JointFusion(PoolingConnector):
    """Media tokens -> ``first_tokens`` and prompt tokens -> ``text_tokens`` (TokenLearner), a
    fusion block over both, then the joint set -> ``num_tokens`` (TokenLearner) and a second
    fusion block; projected into the LM's width per level (the levels share the rest)."""

    uses_text = True

    def __init__(
        self,
        encoder_dim: int,
        lm_dim: int,
        levels: int = 1,
        shared: bool = False,
        num_tokens: int = 8,
        first_tokens: int = 16,
        text_tokens: int = 4,
        width: int = 256,
        heads: int = 4,
        text_dim: int | None = None,
    ):
        super().__init__()
        self.levels, self.num_tokens = levels, num_tokens
        self.order = OrderedTokens()
        self.see = nn.Linear(encoder_dim, width)
        self.read = nn.Linear(text_dim or lm_dim, width)
        self.kind = nn.Embedding(2, width)  # media or text, for the fusion blocks
        self.reduce_media = TokenLearner(width, first_tokens)
        self.reduce_text = TokenLearner(width, text_tokens)
        self.fuse_first = fusion_block(width, heads)
        self.reduce_joint = TokenLearner(width, num_tokens)
        self.fuse_second = fusion_block(width, heads)
        self.projection = LevelProjection(width, lm_dim, levels, shared)

    def pool(
        self, tokens: torch.Tensor, mask: torch.Tensor, text: TextContext | None, levels: int
    ) -> torch.Tensor:
        if text is None:
            raise ValueError("the joint-fusion connector fuses the prompt's text: none was given")
        media = self.reduce_media(self.order(self.see(tokens)), mask)
        embeds, text_mask = text
        words = self.reduce_text(self.order(self.read(embeds.float())), text_mask.bool())
        words = words.repeat_interleave(levels, 0)
        joint = torch.cat([media + self.kind.weight[0], words + self.kind.weight[1]], dim=1)
        joint = self.fuse_first(joint)
        everything = torch.ones(joint.shape[:2], dtype=torch.bool, device=joint.device)
        return self.fuse_second(self.reduce_joint(joint, everything))
