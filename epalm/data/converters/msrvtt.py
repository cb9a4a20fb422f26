"""MSR-VTT captions, from the official video-info files.

Expected under ``--root`` (each file converted when it is there):

- ``train_val_videodatainfo.json`` (train and validation videos) and ``test_videodatainfo.json``
  (test videos): ``videos[]`` with ``video_id`` (``video0``) and ``split``, and ``sentences[]``
  with ``video_id`` and ``caption``;
- the clips as ``videos/{video_id}.mp4`` (the official archives unpack them into
  ``TrainValVideo/`` and ``TestVideo/``: move them into one ``videos/`` folder).

Splits: the videos' own ``split``: train -> train, validate -> val, test -> test (the official
6513 / 497 / 2990 videos). One sample per video with its 20 captions in file order; id
``msrvtt-{video_id}``.
"""

from __future__ import annotations

from pathlib import Path

from epalm.data.converters._common import (
    ConverterError,
    Entry,
    group_by,
    load_json,
    media_path,
    present_splits,
)
from epalm.data.manifest import Sample

MEDIA_PATTERN = "videos/{video_id}.mp4"  # fields: video_id
SPLITS = {"train": "train", "validate": "val", "test": "test"}


def convert(root: Path, media_pattern: str = MEDIA_PATTERN) -> list[Sample]:
    files = {"train+val": ["train_val_videodatainfo.json"], "test": ["test_videodatainfo.json"]}
    samples = []
    for (path,) in present_splits(root, files).values():
        samples += _file(Entry(load_json(path), str(path)), media_pattern)
    return samples


def _file(info: Entry, media_pattern: str) -> list[Sample]:
    videos = {video.get("video_id"): video for video in info.entries("videos")}
    captions = group_by(info.entries("sentences"), lambda s: s.get("video_id"))
    for video_id, sentences in captions.items():
        if video_id not in videos:
            raise ConverterError(f"{sentences[0].where}: video {video_id!r} is not in 'videos'")
    return [
        _sample(video, captions.get(video_id, []), media_pattern)
        for video_id, video in videos.items()
    ]


def _sample(video: Entry, sentences: list[Entry], media_pattern: str) -> Sample:
    video_id = video.get("video_id")
    if not sentences:
        raise ConverterError(f"{video.where}: video {video_id!r} has no sentences")
    extra = {"video_id": video_id}
    if "category" in video.data:
        extra["category"] = video.data["category"]
    return Sample(
        id=f"msrvtt-{video_id}",
        split=video.choice("split", SPLITS),
        modality="video",
        media=[media_path(media_pattern, video, video_id=video_id)],
        captions=[sentence.text("caption") for sentence in sentences],
        extra=extra,
    )
