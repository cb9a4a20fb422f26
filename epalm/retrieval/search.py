"""Serving a search: the indexes of a gallery's media and captions, built once with a trained
dual encoder and saved beside its checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from epalm.atomic import atomic_write_text
from epalm.retrieval.index import RetrievalIndex


@dataclass
class GalleryIndexes:
    media: RetrievalIndex  # keys: media paths
    text: RetrievalIndex  # keys: captions
    captions: dict[str, list[str]] = field(default_factory=dict)  # each media path's captions

    def save(self, directory: Path) -> None:
        self.media.save(directory / "media")
        self.text.save(directory / "text")
        atomic_write_text(directory / "captions.json", json.dumps(self.captions, indent=1))

    @classmethod
    def load(cls, directory: Path) -> GalleryIndexes:
        captions = directory / "captions.json"
        return cls(
            RetrievalIndex.load(directory / "media"),
            RetrievalIndex.load(directory / "text"),
            json.loads(captions.read_text()) if captions.is_file() else {},
        )

    @staticmethod
    def saved_in(directory: Path) -> bool:
        return all((directory / side / "index.json").is_file() for side in ("media", "text"))
