"""``resampler``: K learned latent queries cross-attend to the encoder's tokens (Perceiver
resampler, as in Flamingo and Idefics2), built from transformers' own Idefics2 module."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from epalm.connectors.base import (
    LevelProjection,
    PoolingConnector,
    TextContext,
    register_connector,
)
from epalm.connectors.token_learner import OrderedTokens


def idefics2_resampler(width: int, latents: int, depth: int, heads: int) -> nn.Module:
    """transformers' ``Idefics2PerceiverResampler`` of this size; fails loudly where the module or
    its arguments moved (it is reached by module path, an internal of transformers)."""
    try:
        from transformers.models.idefics2.configuration_idefics2 import Idefics2PerceiverConfig
        from transformers.models.idefics2.modeling_idefics2 import Idefics2PerceiverResampler
    except ImportError as err:
        raise ImportError(
            f"the resampler connector builds on transformers' Idefics2PerceiverResampler, which "
            f"this transformers release does not have where epalm looks ({err})"
        ) from err
    expected = {"context", "attention_mask"}
    if not expected <= set(inspect.signature(Idefics2PerceiverResampler.forward).parameters):
        raise TypeError(
            "transformers' Idefics2PerceiverResampler.forward no longer takes "
            f"{sorted(expected)}: the resampler connector needs updating"
        )
    config = Idefics2PerceiverConfig(
        hidden_size=width,
        resampler_n_latents=latents,
        resampler_depth=depth,
        resampler_n_heads=heads,
        resampler_head_dim=width // heads,
        num_key_value_heads=heads,
    )
    config._attn_implementation = "sdpa"
    return Idefics2PerceiverResampler(config)


@register_connector("resampler")
class ResamplerConnector(PoolingConnector):
    """Each level's tokens (in a ``width``-wide space) read by K learned latents through
    ``depth`` cross-attention blocks (one resampler for all levels), then projected into the
    LM's width per level. Padded tokens are masked out of the attention."""

    def __init__(
        self,
        encoder_dim: int,
        lm_dim: int,
        levels: int = 1,
        shared: bool = False,
        num_tokens: int = 8,
        width: int = 256,
        depth: int = 2,
        heads: int = 4,
    ):
        super().__init__()
        self.levels, self.num_tokens = levels, num_tokens
        self.order = OrderedTokens()
        self.into = nn.Linear(encoder_dim, width)
        self.resampler = idefics2_resampler(width, num_tokens, depth, heads)
        self.projection = LevelProjection(width, lm_dim, levels, shared)

    def pool(
        self, tokens: torch.Tensor, mask: torch.Tensor, text: TextContext | None, levels: int
    ) -> torch.Tensor:
        return self.resampler(self.order(self.into(tokens)), mask.long())
