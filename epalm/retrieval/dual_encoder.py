"""A dual encoder built from two frozen, unaligned towers (LilT): a perceiver and a text encoder,
each pooled into one vector, projected by a trained head into a shared space where matching
media and text lie close. Which other parameters train is the ``align`` variant's choice.

A checkpoint holds only the trained tensors (safetensors) and a config that names the frozen
towers and records a digest of their frozen weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from epalm.atomic import atomic_write, atomic_write_text
from epalm.config import PerceiverConfig, _build
from epalm.encoders.base import Perceiver
from epalm.encoders.registry import build_perceiver
from epalm.errors import MissingFileError
from epalm.fingerprint import state_sha256
from epalm.model import ParameterReport, count_parameters
from epalm.retrieval.align import apply_align, towers
from epalm.retrieval.contrastive import Temperature, contrastive_loss
from epalm.retrieval.towers import TextTower, media_vector

log = logging.getLogger(__name__)
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


@dataclass
class DualEncoderConfig:
    perceiver: PerceiverConfig
    modality: str = "image"  # the perceiver's modality: which samples it reads
    text: dict[str, Any] = field(default_factory=lambda: {"model": "all-minilm-l6-v2"})
    embed_dim: int = 256  # the shared space's width
    temperature: float = 0.07  # the initial one; it is learned
    max_scale: float = 100.0  # the logits' scale (1 / temperature) is clamped to this
    align: str = "adapters"  # which parameters train (epalm.retrieval.align)
    align_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # the trained parts' initialisation
    frozen_digests: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> DualEncoderConfig:
        data = dict(data)
        perceiver = _build(PerceiverConfig, data.pop("perceiver", None), f"{source}: perceiver")
        return _build(cls, {**data, "perceiver": perceiver}, source)


class DualEncoder(nn.Module):
    """``embed_media`` and ``embed_text`` give L2-normalised vectors in the shared space;
    ``forward`` gives the contrastive loss of a batch of matching pairs."""

    # the towers' own weights: unlocked, they train at train.tower_lr (epalm.training.optim)
    TOWER_PREFIXES = ("perceiver.", "text.")

    def __init__(self, config: DualEncoderConfig):
        super().__init__()
        self.config = config
        spec = config.perceiver
        self.perceiver = build_perceiver(spec.name, **spec.kwargs)
        self.text = TextTower(**config.text)
        self.adapters = nn.ModuleDict()
        with torch.random.fork_rng(devices=[]):  # the same heads, whatever ran before
            torch.manual_seed(config.seed)
            self.media_head = nn.Linear(self.perceiver.hidden_size, config.embed_dim)
            self.text_head = nn.Linear(self.text.hidden_size, config.embed_dim)
            self.temperature = Temperature(config.temperature, config.max_scale)
            apply_align(config.align, self, **config.align_kwargs)

    @property
    def device(self) -> torch.device:
        return self.media_head.weight.device

    @property
    def perceivers(self) -> dict[str, Perceiver]:
        """The media tower by modality, as ``EPALM.perceivers`` (datasets and caches read it)."""
        return {self.config.modality: self.perceiver}

    def embed_media(
        self,
        inputs: dict[str, torch.Tensor] | None = None,
        features: torch.Tensor | dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """From the perceiver's inputs, or from the feature cache: its per-level summaries
        ``[batch, levels, hidden]`` (where the media tower trains nothing), or what enters its
        first trained block, ``{"hidden", "mask"}`` (where only its top trains)."""
        if features is None:
            vector = media_vector(self.perceiver, inputs)
        elif isinstance(features, dict):
            start = self.perceiver.first_changed_block()
            if not start:
                raise ValueError(
                    "features hold a block's input, but the media tower trains from its bottom "
                    f"(align={self.config.align}): give it media"
                )
            vector = self.perceiver.from_block(start, features["hidden"], features["mask"])
        else:
            vector = features[:, -1]
        return F.normalize(self.media_head(vector), dim=-1)

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(self.text(input_ids, attention_mask)), dim=-1)

    def forward(
        self, media: dict[str, torch.Tensor], text: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        return contrastive_loss(
            self.embed_media(media), self.embed_text(**text), self.temperature()
        )

    # --- conveniences ------------------------------------------------------------------------
    def preprocess(self, media: Sequence[Any], *, train: bool = False) -> dict[str, torch.Tensor]:
        return self.perceiver.collate([self.perceiver.preprocess(m, train=train) for m in media])

    @torch.no_grad()
    def encode_media(self, media: Sequence[Any]) -> torch.Tensor:
        inputs = {k: v.to(self.device) for k, v in self.preprocess(media).items()}
        return self.embed_media(inputs)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in self.text.tokenize(texts).items()}
        return self.embed_text(**batch)

    # --- what trains ---------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def parameter_report(self) -> ParameterReport:
        sides = towers(self)
        parts = {
            f"{side} tower": count_parameters(tower.parameters()) for side, tower in sides.items()
        }
        parts["adapters"] = count_parameters(self.adapters.parameters())
        heads = [self.media_head, self.text_head, self.temperature]
        parts["heads"] = count_parameters(p for h in heads for p in h.parameters())
        return ParameterReport(parts)

    def frozen_digests(self) -> dict[str, str]:
        """A digest of each tower's frozen tensors."""
        return {
            side: state_sha256(
                {n: p for n, p in tower.named_parameters() if not p.requires_grad}
                | dict(tower.named_buffers())
            )
            for side, tower in towers(self).items()
        }

    # --- checkpoints -------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {k: v.contiguous().cpu() for k, v in self.trainable_state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(weights, p))
        config = {**self.config.to_dict(), "frozen_digests": self.frozen_digests()}
        atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, strict: bool = False) -> DualEncoder:
        """Rebuild the towers from their sources, load the trained tensors, and check that the
        frozen weights are those it was trained with (a warning, or an error when ``strict``)."""
        directory = Path(directory)
        for required in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / required).is_file():
                raise MissingFileError(f"{directory} is not a dual encoder: no {required}")
        data = json.loads((directory / CONFIG_NAME).read_text())
        model = cls(DualEncoderConfig.from_dict(data, source=str(directory / CONFIG_NAME)))
        model.load_trained(directory / WEIGHTS_NAME)
        recorded, now = model.config.frozen_digests, model.frozen_digests()
        if differ := sorted(side for side in now if recorded.get(side) != now[side]):
            message = (
                f"{directory}: the frozen {' and '.join(differ)} tower weights rebuilt here "
                "differ from those this model was trained with"
            )
            if strict:
                raise ValueError(message)
            log.warning("%s", message)
        return model

    def load_trained(self, path: str | os.PathLike) -> None:
        """Load trained weights, insisting they are exactly this model's trainable tensors."""
        weights = load_file(str(path), device=str(self.device))
        expected = set(self.trainable_state_dict())
        if set(weights) != expected:
            raise ValueError(
                f"{path} does not fit align={self.config.align}: missing "
                f"{sorted(expected - set(weights))}, unexpected {sorted(set(weights) - expected)}"
            )
        self.load_state_dict(weights, strict=False)
