"""VQAv2 (open-ended), from the official question and annotation files.

Expected under ``--root`` (a split is converted when both its files are there):

- ``v2_OpenEnded_mscoco_train2014_questions.json`` + ``v2_mscoco_train2014_annotations.json``;
- ``v2_OpenEnded_mscoco_val2014_questions.json`` + ``v2_mscoco_val2014_annotations.json``;
- the COCO 2014 images as ``{train2014,val2014}/COCO_{train2014,val2014}_{image_id:012d}.jpg``.

Splits: train2014 -> train, val2014 -> val. One sample per question with all 10 annotators'
answers in file order, repeats kept (VQA accuracy counts them); id ``vqav2-{question_id}``.

There is no test manifest: test-dev/test2015 answers are hidden (scored only by the EvalAI
server), and a manifest's answers are what training and evaluation read. Writing placeholders
would silently score every test prediction wrong; ``v2_OpenEnded_mscoco_test2015_questions.json``
is therefore ignored.
"""

from __future__ import annotations

from pathlib import Path

from epalm.data.converters._common import (
    ConverterError,
    Entry,
    load_json,
    media_path,
    present_splits,
)
from epalm.data.manifest import Sample

MEDIA_PATTERN = "{subtype}/COCO_{subtype}_{image_id:012d}.jpg"  # fields: subtype, image_id
SUBTYPES = {"train": "train2014", "val": "val2014"}


def convert(root: Path, media_pattern: str = MEDIA_PATTERN) -> list[Sample]:
    files = {
        split: [f"v2_OpenEnded_mscoco_{sub}_questions.json", f"v2_mscoco_{sub}_annotations.json"]
        for split, sub in SUBTYPES.items()
    }
    samples = []
    for split, (questions_path, annotations_path) in present_splits(root, files).items():
        annotations = Entry(load_json(annotations_path), str(annotations_path))
        answered = {a.get("question_id", int): a for a in annotations.entries("annotations")}
        for question in Entry(load_json(questions_path), str(questions_path)).entries("questions"):
            qid = question.get("question_id", int)
            if qid not in answered:
                raise ConverterError(
                    f"{question.where}: question {qid} has no entry in {annotations_path}"
                )
            samples.append(_sample(split, question, answered[qid], media_pattern))
    return samples


def _sample(split: str, question: Entry, annotation: Entry, media_pattern: str) -> Sample:
    qid, image_id = question.get("question_id", int), question.get("image_id", int)
    media = media_path(media_pattern, question, subtype=SUBTYPES[split], image_id=image_id)
    return Sample(
        id=f"vqav2-{qid}",
        split=split,
        modality="image",
        media=[media],
        question=question.text("question"),
        answers=annotation.texts("answers", "answer"),
        extra={
            "question_id": qid,
            "image_id": image_id,
            "answer_type": annotation.get("answer_type"),
            "question_type": annotation.get("question_type"),
            "multiple_choice_answer": annotation.get("multiple_choice_answer"),
        },
    )
