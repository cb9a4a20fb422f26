"""Shared plumbing for perceivers over an HF transformer backbone.

An ``HFPerceiver`` loads its frozen backbone from an ``epalm.zoo`` source (``model``,
``model_config``, ``seed``), takes the output of every transformer block as one level, applies
the backbone's final norm to each (as eP-ALM does) and picks the summary rule: [CLS] where the
backbone has one, the token mean otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoModel

from epalm.encoders.base import Perceiver
from epalm.encoders.blocks import block_input, encoder_blocks, first_changed_block, run_blocks
from epalm.zoo import load_model


def has_cls_token(module: nn.Module) -> bool:
    """Whether a backbone owns a class token (HF and timm call it ``cls_token`` or ``class_embedding``)."""
    return any(
        name.rsplit(".", 1)[-1] in ("cls_token", "class_embedding")
        for name, _ in module.named_parameters()
    )


SUMMARIES = ("cls", "mean", "mean+delta")


def resolve_summary(summary: str, backbone: nn.Module) -> str:
    if summary == "auto":
        return "cls" if has_cls_token(backbone) else "mean"
    if summary not in SUMMARIES:
        raise ValueError(
            f"summary must be 'auto' or one of {', '.join(SUMMARIES)}, got {summary!r}"
        )
    return summary


class HFPerceiver(Perceiver):
    """A perceiver over an HF model that reports per-block hidden states."""

    #: What ``load_model`` instantiates: anything with ``from_pretrained`` and ``from_config``.
    loader: ClassVar[Any] = AutoModel
    #: Where HF backbones keep their final norm, tried in order.
    norm_names: ClassVar[tuple[str, ...]] = ("post_layernorm", "layernorm", "layer_norm")

    def __init__(
        self,
        model: str | None = None,
        model_config: dict[str, Any] | None = None,
        seed: int = 0,
        *,
        summary: str = "auto",
        final_norm: bool = True,
        backbone_overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.source = {"model": model, "model_config": model_config, "seed": seed}
        # config values set at load, e.g. eP-ALM's TimeSformer drop-path {drop_path_rate: 0.1}
        # (it acts only in training mode: see Perceiver.dropout_in_training)
        self.backbone_overrides = dict(backbone_overrides or {})
        if model_config is not None:
            model_config = {**model_config, **self.backbone_overrides}
            self.backbone = load_model(self.loader, None, model_config, seed)
        else:
            self.backbone = load_model(self.loader, model, None, seed, **self.backbone_overrides)
        self._check_overrides()
        # HF replaces hidden_states[-1] by last_hidden_state for some models (already normed for
        # Whisper, not for ViT); turning that off makes every level a raw block output.
        self.backbone.config.tie_last_hidden_states = False
        self.final_norm = final_norm
        self.summary = resolve_summary(summary, self.backbone)
        width = self.token_size = self.backbone.config.hidden_size
        self.hidden_size = 2 * width if self.summary == "mean+delta" else width
        self.num_levels = self.backbone.config.num_hidden_layers

    def norm_layer(self) -> nn.Module:
        """The backbone's final norm; identity when disabled or absent (mean-pooling VideoMAE)."""
        if self.final_norm:
            for name in self.norm_names:
                layer = getattr(self.backbone, name, None)
                if layer is not None:
                    return layer
        return nn.Identity()

    def hidden_states(self, **inputs: torch.Tensor) -> Sequence[torch.Tensor]:
        states = self.backbone(**inputs, output_hidden_states=True).hidden_states
        norm = self.norm_layer()
        # The first state is the embedding output, not a block: keep the last num_levels.
        return [norm(h) for h in states[-self.num_levels :]]

    def first_changed_block(self) -> int | None:
        return first_changed_block(self, self.norm_layer())

    def block_input(self, start: int, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        blocks = encoder_blocks(self.backbone)
        hidden = block_input(blocks, start, lambda: self.hidden_states(**inputs))
        return {"hidden": hidden, "mask": self.token_mask(inputs, hidden.shape[1])}

    def from_block(self, start: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        top = run_blocks(encoder_blocks(self.backbone), hidden, start)
        return self.summarize(self.norm_layer()(top), mask)

    def _check_overrides(self) -> None:
        """HF configs keep any unknown key without a word: refuse one the model never reads."""
        config = self.backbone.config
        known = type(config)().to_dict()
        for key, value in self.backbone_overrides.items():
            if key not in known or getattr(config, key, None) != value:
                raise ValueError(
                    f"backbone_overrides: {type(config).__name__} has no setting {key!r} "
                    f"(or did not take {value!r}); it would silently do nothing"
                )

    def config(self) -> dict[str, Any]:
        extra = {"backbone_overrides": self.backbone_overrides} if self.backbone_overrides else {}
        return {**self.source, "summary": self.summary, "final_norm": self.final_norm, **extra}
