"""AudioCaps, from the official CSV files.

Expected under ``--root`` (each split converted when its file is there):

- ``train.csv``, ``val.csv``, ``test.csv`` (the repository's ``dataset/`` folder): columns
  ``audiocap_id, youtube_id, start_time, caption``, one row per caption;
- the clips as ``audio/{split}/{youtube_id}.wav`` (split: train, val, test), the layout most
  download scripts write. Other layouts: pass a media pattern using ``{split}``,
  ``{youtube_id}`` and ``{start_time}``, e.g. ``"audio/{youtube_id}_{start_time}.wav"``.

Splits: the files' own. Rows are grouped by ``youtube_id`` into one sample per clip (train has
one caption per clip, val and test five); id ``audiocaps-{split}-{youtube_id}`` (a YouTube
video is not promised to be in one split only).
"""

from __future__ import annotations

from pathlib import Path

from epalm.data.converters._common import (
    SPLITS,
    Entry,
    group_by,
    load_csv,
    media_path,
    present_splits,
)
from epalm.data.manifest import Sample

MEDIA_PATTERN = "audio/{split}/{youtube_id}.wav"  # fields: split, youtube_id, start_time
COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")


def convert(root: Path, media_pattern: str = MEDIA_PATTERN) -> list[Sample]:
    files = {split: [f"{split}.csv"] for split in SPLITS}
    samples = []
    for split, (path,) in present_splits(root, files).items():
        clips = group_by(load_csv(path, COLUMNS), lambda row: row.text("youtube_id"))
        samples += [_sample(split, rows, media_pattern) for rows in clips.values()]
    return samples


def _sample(split: str, rows: list[Entry], media_pattern: str) -> Sample:
    first = rows[0]
    youtube_id, start_time = first.text("youtube_id"), first.integer("start_time")
    media = media_path(
        media_pattern, first, split=split, youtube_id=youtube_id, start_time=start_time
    )
    return Sample(
        id=f"audiocaps-{split}-{youtube_id}",
        split=split,
        modality="audio",
        media=[media],
        captions=[row.text("caption") for row in rows],
        extra={
            "youtube_id": youtube_id,
            "start_time": start_time,
            "audiocap_ids": [row.integer("audiocap_id") for row in rows],
        },
    )
