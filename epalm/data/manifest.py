"""The one dataset format: JSON Lines manifests, one sample per line.

Every dataset, embedded or converted from official annotations, becomes manifests like::

    {"id": "coco-391895", "split": "train", "modality": "image", "media": "images/391895.jpg",
     "captions": ["A man riding a bike.", "..."]}
    {"id": "vqa-458752000", "split": "val", "modality": "image", "media": "images/458752.jpg",
     "question": "What is this man holding?", "answers": ["racket", "racket", "...10 in all"]}

``media`` is a path relative to the manifest's directory (or a list of paths). A sample has
either ``captions`` or a ``question`` with its ``answers`` (every annotator's answer, repeats
kept: VQA accuracy needs them). Any other field is kept in ``extra`` and written back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epalm.atomic import atomic_write_text

CORE_FIELDS = ("id", "split", "modality", "media", "captions", "question", "answers")


class ManifestError(ValueError):
    """A manifest line that is not a valid sample; the message names file, line and field."""


@dataclass
class Sample:
    id: str
    split: str
    modality: str
    media: list[str]
    captions: list[str] | None = None
    question: str | None = None
    answers: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    root: Path = Path()  # the manifest's directory; media paths are relative to it

    @property
    def task(self) -> str:
        return "caption" if self.captions is not None else "vqa"

    @property
    def media_paths(self) -> list[Path]:
        return [self.root / m for m in self.media]

    def to_json(self) -> dict[str, Any]:
        data = {"id": self.id, "split": self.split, "modality": self.modality}
        data["media"] = self.media[0] if len(self.media) == 1 else list(self.media)
        if self.captions is not None:
            data["captions"] = list(self.captions)
        else:
            data["question"], data["answers"] = self.question, list(self.answers)
        return {**data, **self.extra}


def read_manifest(path: str | os.PathLike, problems: list[str] | None = None) -> list[Sample]:
    """Every sample of a manifest, validated; errors name the file, line and field. With
    ``problems``, a bad line is recorded there and skipped instead of raised, so that every
    one is found."""
    path = Path(path)
    samples, first_line = [], {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                sample = parse_sample(_json(line, where), where, root=path.parent)
                if sample.id in first_line:
                    raise ManifestError(
                        f"{where}: id {sample.id!r} repeats line {first_line[sample.id]}"
                    )
            except ManifestError as err:
                if problems is None:
                    raise
                problems.append(str(err))
                continue
            first_line[sample.id] = number
            samples.append(sample)
    return samples


def write_manifest(path: str | os.PathLike, samples: Iterable[Sample]) -> None:
    """Write samples as JSON Lines, atomically."""
    text = "".join(json.dumps(s.to_json(), ensure_ascii=False) + "\n" for s in samples)
    atomic_write_text(path, text)


def parse_sample(data: Any, where: str, root: Path = Path()) -> Sample:
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(data).__name__}")
    check = _Checker(data, where)
    media = data.get("media")
    media = [media] if isinstance(media, str) else media
    check.strings("media", media)
    has_captions, has_question = "captions" in data, "question" in data or "answers" in data
    if has_captions == has_question:
        raise ManifestError(f"{where}: a sample has either 'captions' or 'question' + 'answers'")
    if has_question:
        check.text("question")
        check.strings("answers", data.get("answers"))
    else:
        check.strings("captions", data.get("captions"))
    return Sample(
        id=check.text("id"),
        split=check.text("split"),
        modality=check.text("modality"),
        media=list(media),
        captions=data.get("captions"),
        question=data.get("question"),
        answers=data.get("answers"),
        extra={k: v for k, v in data.items() if k not in CORE_FIELDS},
        root=root,
    )


@dataclass
class _Checker:
    data: dict[str, Any]
    where: str

    def text(self, name: str) -> str:
        value = self.data.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ManifestError(
                f"{self.where}: field {name!r}: expected a non-empty string, got {value!r}"
            )
        return value

    def strings(self, name: str, value: Any) -> None:
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            raise ManifestError(
                f"{self.where}: field {name!r}: expected a non-empty list of non-empty strings, got {value!r}"
            )


def _json(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
