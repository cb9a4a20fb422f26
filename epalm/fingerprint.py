"""Digests of frozen weights, so a checkpoint is never served with other frozen parts than it
was trained with (another conversion, another hub revision, a quantised copy)."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def weights_digest(module: nn.Module) -> str:
    """A blake2b digest of every parameter and buffer of ``module``: names, dtypes, shapes and
    bytes, in name order. Equal digests mean bit-identical weights."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # no copy
    return digest.hexdigest()
