"""Clotho v2, from the official caption CSV files.

Expected under ``--root`` (each split converted when its file is there):

- ``clotho_captions_development.csv``, ``clotho_captions_validation.csv``,
  ``clotho_captions_evaluation.csv``: columns ``file_name, caption_1 ... caption_5``;
- the audio as ``{development,validation,evaluation}/{file_name}`` (the folders the official
  ``clotho_audio_*.7z`` archives unpack).

Splits: development -> train, validation -> val, evaluation -> test. One sample per file with
its five captions; id ``clotho-{split}-{file_name}`` (a few files are in two splits).
"""

from __future__ import annotations

from pathlib import Path

from epalm.data.converters._common import Entry, load_csv, media_path, present_splits
from epalm.data.manifest import Sample

MEDIA_PATTERN = "{folder}/{file_name}"  # fields: folder (development, ...), file_name, split
FOLDERS = {"train": "development", "val": "validation", "test": "evaluation"}
CAPTIONS = tuple(f"caption_{i}" for i in range(1, 6))


def convert(root: Path, media_pattern: str = MEDIA_PATTERN) -> list[Sample]:
    files = {split: [f"clotho_captions_{folder}.csv"] for split, folder in FOLDERS.items()}
    return [
        _sample(split, row, media_pattern)
        for split, (path,) in present_splits(root, files).items()
        for row in load_csv(path, ("file_name", *CAPTIONS))
    ]


def _sample(split: str, row: Entry, media_pattern: str) -> Sample:
    file_name = row.text("file_name", strip=False)
    media = media_path(media_pattern, row, folder=FOLDERS[split], file_name=file_name, split=split)
    return Sample(
        id=f"clotho-{split}-{file_name}",
        split=split,
        modality="audio",
        media=[media],
        captions=[row.text(column) for column in CAPTIONS],
        extra={"file_name": file_name},
    )
