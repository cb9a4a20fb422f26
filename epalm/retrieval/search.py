"""Serving a search: the indexes of a gallery's media and captions, built once with a trained
dual encoder and saved beside its checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from epalm.retrieval.index import RetrievalIndex


@dataclass
class GalleryIndexes:
    media: RetrievalIndex  # keys: media paths
    text: RetrievalIndex  # keys: captions

    def save(self, directory: Path) -> None:
        self.media.save(directory / "media")
        self.text.save(directory / "text")

    @classmethod
    def load(cls, directory: Path) -> GalleryIndexes:
        return cls(
            RetrievalIndex.load(directory / "media"), RetrievalIndex.load(directory / "text")
        )

    @staticmethod
    def saved_in(directory: Path) -> bool:
        return all((directory / side / "index.json").is_file() for side in ("media", "text"))
