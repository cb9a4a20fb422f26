"""GQA, balanced questions.

Expected under ``--root`` (each split converted when its file is there):

- ``train_balanced_questions.json``, ``val_balanced_questions.json``,
  ``testdev_balanced_questions.json`` (from ``questions1.2.zip``): objects mapping a question id
  to ``{imageId, question, answer, fullAnswer, types, ...}``;
- the images as ``images/{imageId}.jpg`` (``images.zip``).

Splits: train -> train, val -> val, testdev -> test (test-dev is the split results are reported
on; the challenge ``test``/``submission`` files have no answers and are ignored). One sample per
question, its single answer as ``answers``; id ``gqa-{question id}``.
"""

from __future__ import annotations

from pathlib import Path

from epalm.data.converters._common import (
    Entry,
    load_json,
    media_path,
    present_splits,
)
from epalm.data.manifest import Sample

MEDIA_PATTERN = "images/{image_id}.jpg"  # fields: image_id
FILES = {"train": "train", "val": "val", "test": "testdev"}


def convert(root: Path, media_pattern: str = MEDIA_PATTERN) -> list[Sample]:
    files = {split: [f"{name}_balanced_questions.json"] for split, name in FILES.items()}
    samples = []
    for split, (path,) in present_splits(root, files).items():
        questions = Entry(load_json(path), str(path))  # question id -> question
        for qid, data in questions.data.items():
            samples.append(
                _sample(split, qid, Entry(data, f"question {qid!r}", questions), media_pattern)
            )
    return samples


def _sample(split: str, qid: str, question: Entry, media_pattern: str) -> Sample:
    image_id = question.get("imageId")
    extra = {"question_id": qid, "image_id": image_id}
    extra.update({k: question.data[k] for k in ("fullAnswer", "types") if k in question.data})
    return Sample(
        id=f"gqa-{qid}",
        split=split,
        modality="image",
        media=[media_path(media_pattern, question, image_id=image_id)],
        question=question.text("question"),
        answers=[question.text("answer")],
        extra=extra,
    )
