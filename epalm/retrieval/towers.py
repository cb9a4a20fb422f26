"""The two towers of a dual encoder: a perceiver for the media and a text encoder, each pooled
into one vector; and where a tower keeps its blocks and their sublayers, for the variants that
unlock or adapt part of a tower.

The text encoder is a frozen part named like the others (a hub id, a local directory or an
offline name such as ``all-minilm-l6-v2``): any HF encoder (BERT, RoBERTa, a CLIP's text
tower) or a decoder LM, pooled over its tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel

from epalm.encoders.base import Perceiver
from epalm.zoo import load_model, resolve
from epalm.zoo.loading import load_tokenizer

POOLINGS = ("auto", "mean", "cls", "last")

# A block's sublayers whose outputs an adapter follows (before the residual), by the names the
# supported architectures give them; the first that a block has is taken.
ATTENTION_OUTPUTS = ("attention.output.dense", "attention.o_proj", "self_attn.out_proj",
                     "self_attn.o_proj", "attn.c_proj", "attn.proj")  # fmt: skip
FEED_FORWARD_OUTPUTS = ("output.dense", "mlp.fc2", "fc2", "mlp.down_proj", "mlp.c_proj")


def block_sites(block: nn.Module) -> dict[str, str]:
    """``{"attention": path, "feed_forward": path}``: the submodules of ``block`` whose outputs
    are its attention's and feed-forward's, before the residual."""
    names = {name for name, _ in block.named_modules()}
    sites = {}
    for role, candidates in (
        ("attention", ATTENTION_OUTPUTS),
        ("feed_forward", FEED_FORWARD_OUTPUTS),
    ):
        path = next((c for c in candidates if c in names), None)
        if path is None:
            raise ValueError(
                f"{type(block).__name__}: no {role} output among {list(candidates)}; this "
                "architecture is not supported by the adapters yet"
            )
        sites[role] = path
    return sites


class TextTower(nn.Module):
    """A frozen text encoder and its tokenizer; ``forward`` pools its last hidden state into one
    vector per text. Named like every frozen part: ``model`` (hub id, directory or offline
    name) or ``model_config`` (random weights, from ``seed``) with ``tokenizer``.
    ``pooling``: ``mean`` over real tokens, ``cls`` (the first token), ``last`` (the last real
    token: a decoder LM), or ``auto`` (what the model's sentence-transformers pooling config
    says, else ``last`` for a decoder LM, else ``mean``)."""

    def __init__(
        self,
        model: str | None = None,
        model_config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        seed: int = 0,
        pooling: str = "auto",
        max_length: int = 64,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"text encoder pooling {pooling!r}: choose one of {POOLINGS}")
        self.source = {"model": model, "model_config": model_config, "seed": seed}
        self.tokenizer_name, self.max_length = tokenizer or model, max_length
        self.model = load_model(AutoModel, model, model_config, seed, dtype=torch.float32)
        self.tokenizer = load_tokenizer(self.tokenizer_name)
        if self.tokenizer.pad_token is None:  # decoder LMs: pad with eos, masked anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"  # pooling reads the last real token at the right
        directory = resolve(model) if model is not None else None
        self.pooling = _auto_pooling(directory, self.model) if pooling == "auto" else pooling
        self.hidden_size = self.model.config.hidden_size
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TextTower:
        """Always in eval mode: no dropout, as the perceivers run (their ``freeze``), so that a
        batch's embeddings do not depend on the random state, however it is split."""
        return super().train(False)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )  # fmt: skip
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool_tokens(hidden, attention_mask, self.pooling)

    def config(self) -> dict[str, Any]:
        return {
            **self.source,
            "tokenizer": self.tokenizer_name,
            "pooling": self.pooling,
            "max_length": self.max_length,
        }


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``[batch, tokens, dim]`` -> ``[batch, dim]``; ``mask`` marks real tokens (right-padded)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        last = mask.long().sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def _auto_pooling(directory: Path | None, model: nn.Module) -> str:
    pooling_config = directory / "1_Pooling" / "config.json" if directory else None
    if pooling_config is not None and pooling_config.is_file():
        modes = json.loads(pooling_config.read_text())
        if modes.get("pooling_mode_cls_token"):
            return "cls"
        if modes.get("pooling_mode_mean_tokens"):
            return "mean"
    return "last" if is_decoder_only(model) else "mean"


def is_decoder_only(model: nn.Module) -> bool:
    """A causal LM that is not also a masked LM (GPT-2, Llama, OPT, Qwen: not BERT)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = model.config.model_type
    return (
        kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def media_vector(perceiver: Perceiver, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One vector per sample: the perceiver's summary of its last level ([CLS] for a ViT, the
    mean for Whisper, the frames' summary for a clip)."""
    return perceiver(**inputs)[:, -1]
