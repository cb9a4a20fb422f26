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
    length. ``per_frame``: a clip's frames are pooled one by one into K tokens each (K x frames
    in all, in frame order), so the LM still sees when things happen; otherwise the maps span
    frames x patches. ``frames``: how many equal runs the tokens come in; the frame-wise video
    perceiver sets it, and for audio ``frames=N`` cuts a clip into N segments in time (counting
    beeps needs it). ``motion`` (with ``per_frame``): K more tokens, the later half of the
    frames' pooled tokens minus the earlier half's, the change that eP-ALM's ``mean+delta``
    summary hands the LM."""

    def __init__(
        self,
        encoder_dim: int,
        lm_dim: int,
        levels: int = 1,
        shared: bool = False,
        num_tokens: int = 8,
        hidden: int | None = None,
        per_frame: bool = False,
        motion: bool = False,
        frames: int = 1,
    ):
        super().__init__()
        if motion and not per_frame:
            raise ValueError(
                "token-learner: motion=true compares frames, so it needs per_frame=true"
            )
        self.frames = frames if per_frame else 1
        self.motion = motion and self.frames > 1
        self.levels = levels
        self.num_tokens = num_tokens * (self.frames + self.motion)
        self.order = OrderedTokens()
        self.learner = TokenLearner(encoder_dim, num_tokens, hidden)
        self.projection = LevelProjection(encoder_dim, lm_dim, levels, shared)

    def pool(
        self, tokens: torch.Tensor, mask: torch.Tensor, text: TextContext | None, levels: int
    ) -> torch.Tensor:
        if self.frames == 1:
            return self.learner(self.order(tokens), mask)
        if tokens.shape[1] % self.frames:
            raise ValueError(
                f"per-frame pooling: {tokens.shape[1]} tokens do not split into "
                f"{self.frames} frames of equal length"
            )
        frames = tokens.unflatten(1, (self.frames, -1)).flatten(0, 1)  # [batch x frames, T, D]
        frame_mask = mask.unflatten(1, (self.frames, -1)).flatten(0, 1)
        pooled = self.learner(self.order(frames), frame_mask).unflatten(0, (-1, self.frames))
        if not self.motion:
            return pooled.flatten(1, 2)
        half = self.frames // 2
        change = pooled[:, -half:].mean(1) - pooled[:, :half].mean(1)
        return torch.cat([pooled.flatten(1, 2), change], dim=1)
