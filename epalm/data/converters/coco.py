"""COCO captions with Karpathy's split.

Expected under ``--root``:

- ``dataset_coco.json``: Karpathy's split file (from ``caption_datasets.zip``): ``images[]``
  with ``filepath``, ``filename``, ``split``, ``cocoid`` and ``sentences[].raw``;
- the images as ``{filepath}/{filename}``, i.e. COCO 2014's ``train2014/`` and ``val2014/``
  folders (``train2014/COCO_train2014_000000057870.jpg``).

Splits: Karpathy's ``train`` and ``restval`` -> train (the usual 113k images), ``val`` -> val,
``test`` -> test (5k each). One sample per image with all its captions; id ``coco-{cocoid}``.
"""

from __future__ import annotations

from pathlib import Path

from epalm.data.converters._common import Entry, load_json, media_path
from epalm.data.manifest import Sample

MEDIA_PATTERN = "{filepath}/{filename}"  # fields: filepath, filename, cocoid
SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def convert(root: Path, media_pattern: str = MEDIA_PATTERN) -> list[Sample]:
    path = root / "dataset_coco.json"
    return [
        _sample(image, media_pattern)
        for image in Entry(load_json(path), str(path)).entries("images")
    ]


def _sample(image: Entry, media_pattern: str) -> Sample:
    cocoid = image.get("cocoid", int)
    media = media_path(
        media_pattern,
        image,
        filepath=image.get("filepath"),
        filename=image.get("filename"),
        cocoid=cocoid,
    )
    return Sample(
        id=f"coco-{cocoid}",
        split=image.choice("split", SPLITS),
        modality="image",
        media=[media],
        captions=image.texts("sentences", "raw"),
        extra={"image_id": cocoid, "karpathy_split": image.get("split")},
    )
