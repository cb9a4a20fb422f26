"""Digests of weights: the feature cache keys on a perceiver's, and a checkpoint records its
frozen parts', so it is never served with other frozen weights than it was trained with
(another conversion, another hub revision, a quantised copy)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn


def weights_sha256(module: nn.Module) -> str:
    """A digest of every tensor in ``module.state_dict()``: names, dtypes, shapes and bytes, in
    name order. Equal digests mean bit-identical weights."""
    return state_sha256(module.state_dict())


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """``weights_sha256`` of a state dict."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # no copy
    return digest.hexdigest()
