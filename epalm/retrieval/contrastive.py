"""The symmetric InfoNCE loss of CLIP, with the negatives of every process.

LilT itself contrasts each process's local batch only. Here each process gathers the other
processes' embeddings *with* their gradients (``torch.distributed.nn.functional.all_gather``,
whose backward sums what every process asks of each embedding), so N processes of batch B train
exactly as one process with batch N x B: the same loss and, after DDP's gradient average, the
same gradient.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class Temperature(nn.Module):
    """CLIP's learnable temperature, kept as the log of its inverse: the logits' scale starts at
    ``1 / initial`` (0.07: 14.3) and is clamped to ``max_scale`` (100) so that training cannot
    make the softmax arbitrarily sharp."""

    def __init__(self, initial: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        if not (initial > 0 and 1 / initial <= max_scale):
            raise ValueError(f"temperature: initial={initial} must be in [1/{max_scale}, inf)")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / initial)))
        self.max_scale = max_scale

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.max_scale)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's rows, in rank order, gradients kept; and where this process's rows start.
    Processes may hold different numbers of rows (a last, smaller batch)."""
    if not _distributed():
        return local, 0
    from torch.distributed.nn.functional import all_gather

    sizes = torch.tensor([local.shape[0]], device=local.device)
    every_size = [torch.zeros_like(sizes) for _ in range(dist.get_world_size())]
    dist.all_gather(every_size, sizes)
    counts = [int(s) for s in every_size]
    padded = F.pad(local, (0, 0, 0, max(counts) - local.shape[0]))  # all_gather wants one shape
    rows = [part[:count] for part, count in zip(all_gather(padded), counts)]
    return torch.cat(rows), sum(counts[: dist.get_rank()])


def contrastive_sum(
    media: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, gather: bool = True
) -> tuple[torch.Tensor, int]:
    """This process's share of the symmetric InfoNCE, summed: for each of its pairs, half the
    sum of its two cross-entropies (its item must pick its text among every text of the global
    batch, and its text its item); and the number of pairs in the global batch. ``media``,
    ``text``: ``[B, D]`` projections of matching pairs (row i with row i), normalised here;
    ``scale``: the logits' scale (``Temperature()``)."""
    if media.shape != text.shape or media.ndim != 2:
        raise ValueError(
            f"contrastive loss: media {tuple(media.shape)} and text {tuple(text.shape)} must be "
            "[batch, dim] of the same shape (row i of each is a matching pair)"
        )
    media, text = F.normalize(media, dim=-1), F.normalize(text, dim=-1)
    gathering = gather and _distributed()
    every_media, start = gather_with_grad(media) if gathering else (media, 0)
    every_text, _ = gather_with_grad(text) if gathering else (text, 0)
    targets = torch.arange(start, start + media.shape[0], device=media.device)
    media_to_text = F.cross_entropy(scale * media @ every_text.T, targets, reduction="sum")
    text_to_media = F.cross_entropy(scale * text @ every_media.T, targets, reduction="sum")
    return (media_to_text + text_to_media) / 2, every_media.shape[0]


def contrastive_loss(
    media: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, gather: bool = True
) -> torch.Tensor:
    """Symmetric InfoNCE (``contrastive_sum``). On one process: the mean over the batch's
    pairs. Across processes each returns its share, scaled so that DDP's average of the
    gradients equals the gradient of the global batch's mean, even when the processes hold
    different numbers of pairs."""
    summed, pairs = contrastive_sum(media, text, scale, gather)
    world = dist.get_world_size() if gather and _distributed() else 1
    return summed * world / pairs
