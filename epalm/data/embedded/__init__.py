"""Embedded datasets: built on first use into the data cache, needing nothing beyond PyPI.

    from epalm.data.embedded import build_embedded
    from epalm.data.manifest import read_manifest

    root = build_embedded("shapes-video")  # <cache>/datasets/shapes-video/default-seed0-v1
    train = read_manifest(root / "train.jsonl")

Each dataset directory holds real media files (PNG, MP4, WAV), ``train.jsonl``, ``val.jsonl`` and
``test.jsonl`` (every media item has a caption sample and question-answer samples) and a
README.md card. The same name, seed and size always give the same data: the same files, except
that libx264 now and then encodes a clip to other bytes that decode to the same picture.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from pathlib import Path
from typing import Any

from epalm.data.embedded import easy_vqa, scenes, shapes_video, sound_scenes
from epalm.data.embedded.common import Built, Embedded
from epalm.data.manifest import write_manifest
from epalm.zoo.cache import build_entry, cache_root

log = logging.getLogger(__name__)

EMBEDDED: dict[str, Embedded] = {
    d.name: d
    for d in (
        easy_vqa.DATASET,
        scenes.DATASET,
        shapes_video.DATASET,
        sound_scenes.DATASET,
        sound_scenes.SEQUENCES,
    )
}


def embedded_dir(
    name: str, *, seed: int = 0, cache_dir: str | os.PathLike | None = None, size: str = "default"
) -> Path:
    """Where ``build_embedded`` keeps a dataset: the key holds name, size, seed and version."""
    dataset = _dataset(name)
    _items(dataset, size)
    return cache_root(cache_dir) / "datasets" / name / f"{size}-seed{seed}-v{dataset.version}"


def build_embedded(
    name: str, *, seed: int = 0, cache_dir: str | os.PathLike | None = None, size: str = "default"
) -> Path:
    """The dataset directory, built first if needed (atomically; concurrent callers wait).

    ``size``: "default", or "tiny" (a handful of items per split, for tests).
    """
    dataset = _dataset(name)
    items = _items(dataset, size)

    def build(out_dir: Path) -> dict[str, Any]:
        log.info("building the %s dataset (%s, seed %d)", name, size, seed)
        built = dataset.build(out_dir, seed, items)
        for split, samples in built.samples.items():
            write_manifest(out_dir / f"{split}.jsonl", samples)
        provenance = _provenance(dataset, built, seed, size, items)
        (out_dir / "README.md").write_text(_card(dataset, built, provenance))
        return provenance

    return build_entry(embedded_dir(name, seed=seed, cache_dir=cache_dir, size=size), build)


def _dataset(name: str) -> Embedded:
    if name in EMBEDDED:
        return EMBEDDED[name]
    close = difflib.get_close_matches(name, EMBEDDED, n=2)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise KeyError(
        f"unknown embedded dataset {name!r}.{hint} Known: {', '.join(sorted(EMBEDDED))}."
    )


def _items(dataset: Embedded, size: str) -> dict[str, int]:
    if size not in dataset.sizes:
        raise ValueError(f"{dataset.name} has no size {size!r}; sizes: {', '.join(dataset.sizes)}")
    return dataset.sizes[size]


def _provenance(
    dataset: Embedded, built: Built, seed: int, size: str, items: dict[str, int]
) -> dict[str, Any]:
    from epalm import __version__

    return {
        "name": dataset.name,
        "modality": dataset.modality,
        "dataset_version": dataset.version,
        "size": size,
        "media_items": items,
        "samples": {split: len(samples) for split, samples in built.samples.items()},
        **built.provenance,
        "seed": seed,
        "built_by": f"epalm {__version__}",
    }


def _card(dataset: Embedded, built: Built, provenance: dict[str, Any]) -> str:
    items = ", ".join(f"{n} {split}" for split, n in provenance["media_items"].items())
    return (
        f"# {dataset.name}\n\n{built.card}\n"
        f"Size `{provenance['size']}`, seed {provenance['seed']}: {items} media items. "
        "Manifests: `train.jsonl`, `val.jsonl`, `test.jsonl` (media paths relative to this "
        "directory); each media item has one caption sample and its question-answer samples "
        "(`question_type` names what a question asks).\n\n"
        f"```json\n{json.dumps(provenance, indent=2)}\n```\n"
    )
