"""What every converter shares: reading annotation files with errors that name file and entry,
media path patterns, and writing the splits as manifests."""

from __future__ import annotations

import csv
import json
import logging
import os
import posixpath
from collections.abc import Callable, Hashable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from epalm.data.manifest import Sample, write_manifest

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
T = TypeVar("T")


class ConverterError(ValueError):
    """Official files missing or malformed; the message names the file and the entry."""


class Entry:
    """One record of an annotation file; errors start with ``where``: its file and place."""

    __slots__ = ("_label", "_parent", "data")

    def __init__(self, data: Any, label: str, parent: Entry | str | None = None) -> None:
        self.data, self._label, self._parent = data, label, parent
        if not isinstance(data, dict):
            raise ConverterError(f"{self.where}: expected an object, got {type(data).__name__}")

    @property
    def where(self) -> str:
        # built only for messages: formatting it for each of a million entries costs seconds
        parent = self._parent.where if isinstance(self._parent, Entry) else self._parent
        return self._label if parent is None else f"{parent}: {self._label}"

    def get(self, key: str, kind: type | tuple[type, ...] = str) -> Any:
        value = self.data.get(key)
        if value is None:
            raise ConverterError(f"{self.where}: missing {key!r}")
        # bool is an int in Python, never a valid id or count here
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConverterError(f"{self.where}: {key!r} should be {_kind(kind)}, got {value!r}")
        return value

    def text(self, key: str, strip: bool = True) -> str:
        """A non-empty string; ``strip=False`` for file names, where spaces are significant."""
        value = self.get(key)
        if not value.strip():
            raise ConverterError(f"{self.where}: {key!r} is empty")
        return value.strip() if strip else value

    def choice(self, key: str, values: dict[str, str]) -> str:
        """``values[self[key]]``: e.g. an official split name mapped to ours."""
        value = self.get(key)
        if value not in values:
            raise ConverterError(
                f"{self.where}: unknown {key} {value!r} (expected {', '.join(values)})"
            )
        return values[value]

    def integer(self, key: str) -> int:
        """An integer, also when written as text (CSV cells)."""
        value = self.get(key, (int, str))
        try:
            return int(value)
        except ValueError:
            raise ConverterError(
                f"{self.where}: {key!r} should be an integer, got {value!r}"
            ) from None

    def entries(self, key: str) -> list[Entry]:
        """The objects of the list under ``key``, each named by its index."""
        return [Entry(item, f"{key}[{i}]", self) for i, item in enumerate(self.get(key, list))]

    def texts(self, key: str, field: str) -> list[str]:
        """``field`` of each object listed under ``key``: at least one."""
        values = [entry.text(field) for entry in self.entries(key)]
        if not values:
            raise ConverterError(f"{self.where}: {key!r} is empty")
        return values


def _kind(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def require(path: Path) -> Path:
    if not path.is_file():
        raise ConverterError(f"{path}: not found")
    return path


def load_json(path: Path) -> Any:
    try:
        with require(path).open(encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as err:
        raise ConverterError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None


def load_csv(path: Path, columns: Iterable[str]) -> list[Entry]:
    """The rows of a CSV file with a header holding ``columns``; rows are named by line."""
    with require(path).open(encoding="utf-8-sig", newline="") as file:  # -sig: tolerate a BOM
        reader = csv.DictReader(file)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ConverterError(
                f"{path}: header lacks column(s) {', '.join(missing)} (has: {reader.fieldnames})"
            )
        return [Entry(row, f"line {reader.line_num}", str(path)) for row in reader]


def group_by(items: Iterable[T], key: Callable[[T], Hashable]) -> dict[Hashable, list[T]]:
    """Items grouped by key, groups and items in order of first appearance."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def present_splits(root: Path, files: dict[str, list[str]]) -> dict[str, list[Path]]:
    """The splits whose annotation files are all under root (datasets often come split by split).

    A split with only some of its files is an error, and so is finding no split at all.
    """
    present = {}
    for split, names in files.items():
        paths = [root / name for name in names]
        missing = [p for p in paths if not p.is_file()]
        if not missing:
            present[split] = paths
        elif len(missing) < len(paths):
            found = ", ".join(p.name for p in paths if p not in missing)
            raise ConverterError(
                f"{missing[0]}: not found (the {split} split needs it beside {found})"
            )
        else:
            log.info("%s split skipped: %s not found", split, ", ".join(map(str, paths)))
    if not present:
        expected = sorted({str(root / n) for names in files.values() for n in names})
        raise ConverterError(f"no annotation files found; expected {', '.join(expected)}")
    return present


def media_path(pattern: str, entry: Entry, **fields: Any) -> str:
    """``pattern`` filled in with ``entry``'s ``fields``: a media path relative to the root."""
    try:
        return pattern.format(**fields)
    except (KeyError, IndexError, ValueError) as err:
        raise ConverterError(
            f"{entry.where}: media pattern {pattern!r} does not fit ({err!r}); "
            f"its fields: {', '.join('{' + f + '}' for f in fields)}"
        ) from None


def write_splits(samples: list[Sample], root: Path, out: Path, check_media: bool) -> list[Path]:
    """Write ``{split}.jsonl`` under ``out`` for each split present; media paths in ``samples``
    are relative to ``root`` and become relative to ``out``."""
    _check(samples, root, check_media)
    # one relpath for the whole dataset: relpath per sample is slow for a million questions
    prefix = Path(os.path.relpath(root, out)).as_posix()
    by_split = group_by(samples, lambda s: s.split)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split in (s for s in SPLITS if s in by_split):
        path = out / f"{split}.jsonl"
        write_manifest(
            path,
            (
                replace(s, media=[posixpath.normpath(f"{prefix}/{m}") for m in s.media])
                for s in by_split[split]
            ),
        )
        log.info("%s: %d samples", path, len(by_split[split]))
        written.append(path)
    return written


def _check(samples: list[Sample], root: Path, check_media: bool) -> None:
    """Ids unique across all splits (manifests get merged); media present if asked."""
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise ConverterError(f"two samples have the id {sample.id!r}")
        seen.add(sample.id)
        if check_media:
            for media in sample.media:
                if not (root / media).is_file():
                    raise ConverterError(
                        f"{root / media}: media file not found (sample {sample.id})"
                    )
