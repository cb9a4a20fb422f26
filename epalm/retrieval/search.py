"""Serving a search: the indexes of a gallery's media and captions, built once with a trained
dual encoder and saved beside its checkpoint, and queries against them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epalm.retrieval.index import RetrievalIndex

log = logging.getLogger(__name__)


@dataclass
class GalleryIndexes:
    media: RetrievalIndex  # keys: media paths
    text: RetrievalIndex  # keys: captions


def gallery_indexes(directory: Path, build: Any, kind: str = "auto") -> GalleryIndexes:
    """The indexes saved in ``directory``, or, the first time, ``build()``'s ``(media paths,
    media embeddings, captions, caption embeddings)`` indexed and saved there."""
    if (directory / "media" / "index.json").is_file() and (
        directory / "text" / "index.json"
    ).is_file():
        return GalleryIndexes(
            RetrievalIndex.load(directory / "media"), RetrievalIndex.load(directory / "text")
        )
    paths, items, captions, texts = build()
    indexes = GalleryIndexes(
        RetrievalIndex(items, paths, kind=kind), RetrievalIndex(texts, captions, kind=kind)
    )
    indexes.media.save(directory / "media")
    indexes.text.save(directory / "text")
    log.info(
        "indexed %d media and %d captions (%s): %s",
        len(indexes.media),
        len(indexes.text),
        indexes.media.kind,
        directory,
    )
    return indexes
