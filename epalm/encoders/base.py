"""The Perceiver base class: the public way to give epalm a modality.

A perceiver owns three things, in the spirit of HF Perceiver's per-modality preprocessors:
its preprocessing (raw media -> tensors for one sample), its frozen backbone, and the rule that
summarises one layer's hidden states into one vector ([CLS] for ViTs, the mean where a backbone
has no CLS token). The model only ever sees ``forward``'s output: one summary per layer,
``[batch, num_levels, hidden_size]``, from which the connector keeps the last few levels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

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

    def prepare(self, media: Sequence[Any], *, train: bool = False) -> dict[str, torch.Tensor]:
        """A list of raw media -> one batch of inputs (preprocess each, then collate)."""
        return self.collate([self.preprocess(m, train=train) for m in media])

    def encode(self, media: Sequence[Any]) -> torch.Tensor:
        """Convenience: prepare and run a list of raw media."""
        batch = self.prepare(media)
        device = next(self.parameters()).device
        with torch.no_grad():
            return self(**{k: v.to(device) for k, v in batch.items()})


def _masked_mean(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)
