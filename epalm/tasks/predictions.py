"""Predictions in the COCO results format, for the official evaluation tools and servers."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

from epalm.atomic import atomic_write_text

_FIELDS = {"caption": ("image_id", "caption"), "vqa": ("question_id", "answer")}
_NUMERIC_SUFFIX = re.compile(r"(?:^|-)(\d+)$")


def official_id(sample_id: str) -> int | str:
    """The dataset's own numeric id where a sample id ends in one ("coco-391895" -> 391895), as
    the official tools expect integers; any other id is kept as it is."""
    match = _NUMERIC_SUFFIX.search(sample_id)
    return int(match.group(1)) if match else sample_id


def write_predictions(path: str | os.PathLike, predictions: Mapping[str, str], task: str) -> None:
    """Write ``{sample id: text}`` atomically as COCO results.

    ``task="caption"``: ``[{"image_id": ..., "caption": ...}]``; ``task="vqa"``:
    ``[{"question_id": ..., "answer": ...}]``. Ids go through ``official_id``.
    """
    if task not in _FIELDS:
        raise ValueError(f"unknown task {task!r}; choose {' or '.join(_FIELDS)}")
    id_field, text_field = _FIELDS[task]
    rows = [{id_field: official_id(i), text_field: text} for i, text in predictions.items()]
    ids = [r[id_field] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: two samples map to the same official id; ids: {ids[:10]}")
    atomic_write_text(path, json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
