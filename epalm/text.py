"""Prompts and targets -> padded token batches with label masks.

Prompt and target are tokenised apart and joined, so the ids a model is trained on start with
exactly the ids it is later prompted with at generation time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Ensure a pad token (the eos token where the LM has none); the vocabulary never grows."""
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no eos token; epalm needs one to end targets"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def _target_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, target: str) -> list[int]:
    text = f" {target}" if prompt else target
    return [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


def _pad(rows: Sequence[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    padded = [
        [value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows
    ]
    return torch.tensor(padded, dtype=torch.long).reshape(len(rows), width)


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Left-padded prompts for batched generation."""
    ids = [_prompt_ids(tokenizer, p) for p in prompts]
    return {
        "input_ids": _pad(ids, tokenizer.pad_token_id, left=True),
        "attention_mask": _pad([[1] * len(r) for r in ids], 0, left=True),
    }


def encode_training(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    targets: Sequence[str],
    loss_on_prompt: bool = False,
) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + target + eos`` with labels on the target (and prompt if asked)."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    ids, labels = [], []
    for prompt, target in zip(prompts, targets):
        prompt_ids, target_ids = (
            _prompt_ids(tokenizer, prompt),
            _target_ids(tokenizer, prompt, target),
        )
        ids.append(prompt_ids + target_ids)
        prompt_labels = prompt_ids if loss_on_prompt else [IGNORE_INDEX] * len(prompt_ids)
        labels.append(prompt_labels + target_ids)
    return {
        "input_ids": _pad(ids, tokenizer.pad_token_id, left=False),
        "attention_mask": _pad([[1] * len(r) for r in ids], 0, left=False),
        "labels": _pad(labels, IGNORE_INDEX, left=False),
    }
