"""Retrieval as a task: the gallery a split's caption samples make, its recalls, the
shuffled-pairs control, and zero-shot classification from prompts.

A split's caption samples are its gallery: one item per media file, with every caption any
sample gives it. Texts search items (text -> media) and items search texts (media -> text);
``epalm.retrieval.metrics`` says how hits are counted (an item carrying the query's exact
caption is a hit).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from epalm.data.manifest import Sample
from epalm.retrieval.metrics import relevance, retrieval_recalls


@dataclass
class Gallery:
    items: list[Sample]  # one caption sample per media file, in split order
    item_captions: list[list[str]]  # every caption of each item
    captions: list[str]  # the text queries: every caption, item by item

    def __len__(self) -> int:
        return len(self.items)


def build_gallery(samples: Sequence[Sample]) -> Gallery:
    """The gallery of a split: its caption samples grouped by media (questions are ignored)."""
    by_media: dict[tuple[str, ...], tuple[Sample, list[str]]] = {}
    for sample in samples:
        if sample.captions is None:
            continue
        key = tuple(str(p) for p in sample.media_paths)
        _, texts = by_media.setdefault(key, (sample, []))
        texts += [c for c in sample.captions if c not in texts]
    if not by_media:
        raise ValueError("retrieval needs caption samples: this split has none")
    items = [first for first, _ in by_media.values()]
    item_captions = [texts for _, texts in by_media.values()]
    return Gallery(items, item_captions, [c for texts in item_captions for c in texts])


def retrieval_scores(
    media: torch.Tensor, text: torch.Tensor, gallery: Gallery, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K both ways, from the items' (``media``) and captions' (``text``) normalised
    embeddings, in gallery order."""
    similarity = text.float() @ media.float().T
    return retrieval_recalls(similarity, relevance(gallery.item_captions, gallery.captions), ks)


def shuffled_scores(
    media: torch.Tensor,
    text: torch.Tensor,
    gallery: Gallery,
    ks: Sequence[int] = (1, 5, 10),
    seed: int = 0,
) -> dict[str, float]:
    """The same embeddings scored against pairs shuffled at random: what the metric gives a
    model that has learnt nothing of which text goes with which item (about k / items)."""
    order = list(range(len(gallery)))
    random.Random(seed).shuffle(order)
    shuffled = Gallery(
        [gallery.items[i] for i in order], [gallery.item_captions[i] for i in order],
        gallery.captions,
    )  # fmt: skip
    return retrieval_scores(media, text, shuffled, ks)


def zero_shot_accuracy(
    media: torch.Tensor, labels: Sequence[str], classes: Sequence[str], class_text: torch.Tensor
) -> dict[str, Any]:
    """Each item's class is the prompt closest to it (``class_text``: one normalised embedding
    per class, from prompts such as "a photo of a {label}"); accuracy in percent, and chance."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"zero-shot: labels {unknown} are not among the classes {list(classes)}")
    predicted = (media.float() @ class_text.float().T).argmax(1)
    truth = torch.tensor([index[label] for label in labels])
    majority = max(labels.count(c) for c in classes) / len(labels)
    return {
        "accuracy": 100 * (predicted == truth).float().mean().item(),
        "majority": 100 * majority,
        "classes": len(classes),
    }
