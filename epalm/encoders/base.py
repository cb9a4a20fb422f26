"""The Perceiver base class: the public way to give epalm a modality.

A perceiver owns three things, in the spirit of HF Perceiver's per-modality preprocessors:
its preprocessing (raw media -> tensors for one sample), its frozen backbone, and the rule that
summarises one layer's hidden states into one vector ([CLS] for ViTs, the mean where a backbone
has no CLS token). ``forward`` gives one summary per layer, ``[batch, num_levels, hidden_size]``,
from which eP-ALM's connector keeps the last few levels; ``tokens`` gives every token of the
last few layers with a mask, for the connectors that pool or fuse tokens themselves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from epalm.encoders.blocks import changed_parts

Summary = str  # "cls" | "mean"


class Perceiver(nn.Module, ABC):
    """A frozen unimodal encoder that turns media into per-layer summary vectors.

    Subclasses set ``modality`` and implement ``preprocess`` and ``hidden_states`` (or override
    ``forward`` when a layer's summary is not a plain token reduction, as the frame-wise video
    perceiver does). They must also set ``hidden_size`` and ``num_levels``, and return from
    ``config()`` the keyword arguments that rebuild them, so checkpoints can name them.
    """

    modality: ClassVar[str] = ""
    #: The name under which the class is registered (set by ``register_perceiver``).
    registry_name: ClassVar[str] = ""

    hidden_size: int
    num_levels: int
    summary: Summary = "cls"
    #: how many equal runs ``tokens`` come in, one after the other (a clip's frames; 1: one)
    token_frames: int = 1

    @property
    def token_size(self) -> int:
        """The width of ``tokens``' tokens (``hidden_size`` unless a summary widens it)."""
        return getattr(self, "_token_size", None) or self.hidden_size

    @token_size.setter
    def token_size(self, value: int) -> None:
        self._token_size = value

    # --- what a subclass provides -------------------------------------------------------
    @abstractmethod
    def preprocess(self, media: Any, *, train: bool = False) -> dict[str, torch.Tensor]:
        """Raw media of one sample (array, PIL image, path, ...) -> tensors without batch dim."""

    def hidden_states(self, **inputs: torch.Tensor) -> Sequence[torch.Tensor]:
        """The hidden states ``[batch, tokens, hidden]`` of every layer, shallow to deep."""
        raise NotImplementedError(f"{type(self).__name__} must implement hidden_states or forward")

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable keyword arguments that rebuild this perceiver (for checkpoints)."""

    def preprocessing(self) -> dict[str, Any]:
        """The values ``preprocess`` actually uses beyond ``config()``, such as the image mean
        and std read from a checkpoint's preprocessor config: the feature cache keys on them."""
        return {}

    # --- shared behaviour ----------------------------------------------------------------
    def collate(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Stack preprocessed samples into a batch (override to pad variable lengths)."""
        return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}

    def summarize(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """One layer ``[batch, tokens, hidden]`` -> ``[batch, hidden]`` (``[batch, 2 * hidden]``
        for "mean+delta"); ``mask`` ``[batch, tokens]`` marks real tokens for the means.

        "mean+delta" appends the mean of the later half of the real tokens minus that of the
        earlier half: for a sequence in time (audio) it keeps what a plain mean loses, which
        event came first.
        """
        if self.summary == "cls":
            return hidden[:, 0]
        if mask is None:
            mask = hidden.new_ones(hidden.shape[:2])
        mask = mask.to(hidden.dtype)
        mean = _masked_mean(hidden, mask)
        if self.summary == "mean":
            return mean
        if self.summary == "mean+delta":
            # rank of each real token among its sample's real tokens, and their count
            rank, count = mask.cumsum(1) - 1, mask.sum(1, keepdim=True)
            early = mask * (rank < count // 2)
            late = mask * (rank >= count - count // 2)
            delta = _masked_mean(hidden, late) - _masked_mean(hidden, early)
            return torch.cat([mean, delta], dim=-1)
        raise ValueError(
            f"{type(self).__name__}: unknown summary {self.summary!r} "
            "(use 'cls', 'mean' or 'mean+delta')"
        )

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Per-layer summaries ``[batch, num_levels, hidden_size]``, shallow to deep."""
        return torch.stack([self.summarize(h) for h in self.hidden_states(**inputs)], dim=1)

    def tokens(self, levels: int, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every token of the last ``levels`` layers: ``{"tokens": [batch, levels, T,
        token_size], "mask": [batch, T]}`` (1: a real token, 0: padding)."""
        hidden = list(self.hidden_states(**inputs))[-levels:]
        tokens = torch.stack(hidden, dim=1)
        return {"tokens": tokens, "mask": self.token_mask(inputs, tokens.shape[2])}

    def token_mask(self, inputs: dict[str, torch.Tensor], length: int) -> torch.Tensor:
        """Which of ``length`` tokens per sample are real (all, unless inputs were padded)."""
        batch = next(iter(inputs.values())).shape[0]
        return torch.ones(
            batch, length, dtype=torch.long, device=next(iter(inputs.values())).device
        )

    #: Whether ``train()`` really switches to training mode (dropout, drop-path on; still no
    #: gradients), as eP-ALM's code runs its frozen encoders. Off: always in eval.
    dropout_in_training: bool = False

    def freeze(self) -> Perceiver:
        """Frozen: no gradients, and ``train()`` switches dropout back on only when
        ``dropout_in_training`` is set."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Perceiver:
        return super().train(mode and self.dropout_in_training)

    def stochastic_layers(self) -> list[str]:
        """Names of the submodules that act differently in training mode (dropout, drop-path
        with a rate above 0): features cached in eval mode cannot stand for them."""
        return [
            name
            for name, module in self.named_modules()
            if (isinstance(module, nn.Dropout) and module.p > 0)
            or float(getattr(module, "drop_prob", 0.0) or 0.0) > 0
        ]

    # --- the top of the tower only (where only its top trains) -----------------------------
    def first_changed_block(self) -> int | None:
        """The lowest block a run trains or adapts, where nothing below it changes (the
        frozen bottom then gives each file one hidden state, worth caching); ``None`` where
        nothing changes, 0 where no block's input can stand for the media."""
        return 0 if changed_parts(self) else None

    def block_input(self, start: int, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """What enters block ``start``: ``{"hidden": [batch, ..., tokens, dim], "mask":
        [batch, ..., tokens]}``, what ``from_block`` takes."""
        raise NotImplementedError(f"{type(self).__name__} cannot run from a block's input")

    def from_block(self, start: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The last level's summary ``[batch, hidden_size]`` (``forward(...)[:, -1]``), from
        ``block_input``'s output: only blocks ``start..`` run."""
        raise NotImplementedError(f"{type(self).__name__} cannot run from a block's input")

    def prepare(self, media: Sequence[Any], *, train: bool = False) -> dict[str, torch.Tensor]:
        """A list of raw media -> one batch of inputs (preprocess each, then collate)."""
        return self.collate([self.preprocess(m, train=train) for m in media])

    def encode(self, media: Sequence[Any]) -> torch.Tensor:
        """Convenience: prepare and run a list of raw media."""
        batch = self.prepare(media)
        device = next(self.parameters()).device
        with torch.no_grad():
            return self(**{k: v.to(device) for k, v in batch.items()})


def token_features(
    perceiver: Perceiver, levels: int, **inputs: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The tokens of ``perceiver``'s last ``levels`` layers as a token connector reads them:
    float16 (half the memory and disk; the frozen encoder's precision is not what limits a
    connector) and the mask. The feature cache stores exactly this, and the model computes it
    the same way from media, so both give the same numbers."""
    with torch.no_grad():
        out = perceiver.tokens(levels, **inputs)
    return {"tokens": out["tokens"].to(torch.float16), "mask": out["mask"].long()}


def _masked_mean(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)
