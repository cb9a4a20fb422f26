"""Recall@K in both directions: text -> media and media -> text.

A retrieved item counts as a hit when it is relevant to the query, and relevance is by caption
text: a caption is relevant to every item that carries that exact caption. Where several items
of a gallery share a caption (two scenes both "a small red circle left of a large blue
square"), no model could tell them apart from the text, so retrieving either one is a hit, in
both directions. The mean recall is the mean of the 2 x len(ks) recalls (CLIP's "R_mean").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def relevance(item_captions: Sequence[Sequence[str]], captions: Sequence[str]) -> torch.Tensor:
    """``[len(captions), len(items)]``: caption t is relevant to item m when m carries its text."""
    owners: dict[str, set[int]] = {}
    for item, texts in enumerate(item_captions):
        for text in texts:
            owners.setdefault(text, set()).add(item)
    relevant = torch.zeros(len(captions), len(item_captions), dtype=torch.bool)
    for row, text in enumerate(captions):
        relevant[row, sorted(owners.get(text, ()))] = True
    return relevant


def retrieval_recalls(
    similarity: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recalls in percent from ``similarity`` and ``relevant``, both ``[captions, items]``:
    ``text_to_media_r@k``, ``media_to_text_r@k`` and ``mean_recall``."""
    if similarity.shape != relevant.shape:
        raise ValueError(
            f"similarity {tuple(similarity.shape)} and relevance {tuple(relevant.shape)} differ"
        )
    if not relevant.any(1).all() or not relevant.any(0).all():
        raise ValueError("every caption needs a relevant item and every item a caption")
    scores = {}
    for direction, sim, rel in (
        ("text_to_media", similarity, relevant),
        ("media_to_text", similarity.T, relevant.T),
    ):
        for k in ks:
            top = sim.topk(min(k, sim.shape[1]), dim=1).indices
            scores[f"{direction}_r@{k}"] = 100 * rel.gather(1, top).any(1).float().mean().item()
    scores["mean_recall"] = sum(scores.values()) / len(scores)
    return scores
