"""MSRVTT-QA and MSVD-QA (Xu et al., 2017): open-ended video QA, one answer per question.

Both come as ``{train,val,test}_qa.json``: lists of ``{question, answer, id, video_id}``
(``video_id`` is the video's number; a derived release's ``video``, e.g. ``"video7010"`` or
``"vid1"``, is read too). Expected under ``--root`` (each split converted when its file is
there, the others skipped):

- MSRVTT-QA: ``{train,val,test}_qa.json``; the MSR-VTT clips as ``videos/video{N}.mp4``
  (N: the question's ``video_id``), as for the ``msrvtt`` converter.
- MSVD-QA: ``{train,val,test}_qa.json`` and ``youtube_mapping.txt`` (lines ``{clip} vid{N}``,
  mapping video number N to its YouTube clip name; every split needs it); the MSVD clips as
  ``YouTubeClips/{clip}.avi`` (the folder ``YouTubeClips.tar`` unpacks).

Splits: the files' own. Ids ``msrvtt-qa-{split}-{id}`` / ``msvd-qa-{split}-{id}``: the split is
part of the id because the release does not promise ``id`` unique across files.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path

from epalm.data.converters._common import (
    SPLITS,
    ConverterError,
    Entry,
    load_json,
    load_lines,
    media_path,
    present_splits,
)
from epalm.data.manifest import Sample

MSRVTT_QA_MEDIA = "videos/{video_id}.mp4"  # fields: video_id (video{N})
MSVD_QA_MEDIA = "YouTubeClips/{clip}.avi"  # fields: video_id (vid{N}), clip
MAPPING = "youtube_mapping.txt"


def convert_msrvtt_qa(root: Path, media_pattern: str = MSRVTT_QA_MEDIA) -> list[Sample]:
    return _convert("msrvtt-qa", root, [], lambda n, _: {"video_id": f"video{n}"}, media_pattern)


def convert_msvd_qa(root: Path, media_pattern: str = MSVD_QA_MEDIA) -> list[Sample]:
    mapping = functools.cache(lambda: _mapping(root / MAPPING))  # read once a split is found

    def fields(number: int, entry: Entry) -> dict[str, str]:
        video_id = f"vid{number}"
        if video_id not in mapping():
            raise ConverterError(f"{entry.where}: {video_id} is not in {root / MAPPING}")
        return {"video_id": video_id, "clip": mapping()[video_id]}

    return _convert("msvd-qa", root, [MAPPING], fields, media_pattern)


def _convert(
    name: str,
    root: Path,
    shared: list[str],
    fields: Callable[[int, Entry], dict[str, str]],
    media_pattern: str,
) -> list[Sample]:
    """``shared``: files every split needs beside its own; ``fields(video number, entry)``: the
    video's fields, for the media pattern and extras."""
    files = {split: [f"{split}_qa.json"] for split in SPLITS}
    samples = []
    for split, (path, *_) in present_splits(root, files, shared).items():
        for i, item in enumerate(_list(path)):
            entry = Entry(item, f"entry {i}", str(path))
            video = fields(_video_number(entry), entry)
            samples.append(_sample(name, split, entry, video, media_pattern))
    return samples


def _sample(
    name: str, split: str, entry: Entry, video: dict[str, str], media_pattern: str
) -> Sample:
    qid = entry.get("id", int)
    category = {"category_id": entry.data["category_id"]} if "category_id" in entry.data else {}
    return Sample(
        id=f"{name}-{split}-{qid}",
        split=split,
        modality="video",
        media=[media_path(media_pattern, entry, **video)],
        question=entry.text("question"),
        answers=[entry.text("answer")],
        extra={"question_id": qid, **video, **category},
    )


def _list(path: Path) -> list:
    data = load_json(path)
    if not isinstance(data, list):
        raise ConverterError(f"{path}: expected a list of questions, got {type(data).__name__}")
    return data


def _video_number(entry: Entry) -> int:
    value = entry.data.get("video_id", entry.data.get("video"))
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = (
        re.fullmatch(r"(?:video|vid)?(\d+)(?:\.\w+)?", value) if isinstance(value, str) else None
    )
    if match is None:
        raise ConverterError(
            f"{entry.where}: expected 'video_id' (the video's number) or 'video', got {value!r}"
        )
    return int(match.group(1))


def _mapping(path: Path) -> dict[str, str]:
    """``vid{N}`` -> YouTube clip name, from ``youtube_mapping.txt``."""
    mapping = {}
    for number, line in enumerate(load_lines(path), 1):
        words = line.split()
        if not words:
            continue
        if len(words) != 2:
            raise ConverterError(f"{path}: line {number}: expected '<clip> vid<N>', got {line!r}")
        clip, video_id = words
        mapping[video_id] = clip
    return mapping
