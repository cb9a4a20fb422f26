"""Converters from public datasets' official annotation files to manifests.

``prepare(name, root)`` reads the official files under ``root`` and writes ``train.jsonl``,
``val.jsonl`` and ``test.jsonl`` (the splits found) with media paths pointing at the files under
``root``. Each module's docstring lists the files it expects and how it makes the splits.
Media files are not opened (they may be downloaded later), only counted when missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from epalm.data.converters import audiocaps, clotho, coco, gqa, msrvtt, videoqa, vqav2
from epalm.data.converters._common import ConverterError, write_splits
from epalm.data.manifest import Sample

__all__ = ["CONVERTERS", "ConverterError", "available_converters", "prepare"]

# name -> convert(root, media_pattern=...) -> samples with media relative to root
CONVERTERS: dict[str, Callable[..., list[Sample]]] = {
    "audiocaps": audiocaps.convert,
    "clotho": clotho.convert,
    "coco": coco.convert,
    "gqa": gqa.convert,
    "msrvtt": msrvtt.convert,
    "msrvtt-qa": videoqa.convert_msrvtt_qa,
    "msvd-qa": videoqa.convert_msvd_qa,
    "vqav2": vqav2.convert,
}


def available_converters() -> list[str]:
    return sorted(CONVERTERS)


def prepare(
    name: str,
    root: Path,
    out: Path | None = None,
    *,
    check_media: bool = False,
    media_pattern: str | None = None,
) -> list[Path]:
    """Convert dataset ``name``'s official files under ``root`` into manifests under ``out``
    (default: ``root``); return the manifests written.

    ``media_pattern`` overrides where the dataset's media files lie under ``root`` (a
    ``str.format`` pattern; each module documents its fields). Missing media files are counted
    in a warning; ``check_media`` makes them an error that lists them all (in
    ``out/missing_media.txt``) and writes no manifest.
    """
    if name not in CONVERTERS:
        raise ConverterError(
            f"unknown dataset {name!r}; known: {', '.join(available_converters())}"
        )
    root = Path(root)
    options = {} if media_pattern is None else {"media_pattern": media_pattern}
    try:
        samples = CONVERTERS[name](root, **options)
        return write_splits(samples, root, root if out is None else Path(out), check_media)
    except ConverterError as err:
        raise ConverterError(f"{name}: {err}") from None
