"""What every converter shares: reading annotation files with errors that name file and entry,
media path patterns, and writing the splits as manifests."""

from __future__ import annotations

import csv
import json
import logging
import os
import posixpath
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO, TypeVar

from epalm.data.converters._unreadable import not_utf8_problem, placeholder_problem
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


@contextmanager
def open_annotation(path: Path) -> Iterator[TextIO]:
    """``path`` opened as UTF-8 text (a BOM is skipped), once it is known to be the real file and
    not a Git LFS or git-annex placeholder; a byte that is not UTF-8 becomes an error naming the
    file, the offset and the line."""
    problem = placeholder_problem(path)
    if problem:
        raise ConverterError(problem)
    try:
        with require(path).open(encoding="utf-8-sig", newline="") as file:
            yield file
    except UnicodeDecodeError:
        # the stream's error counts from its last chunk: read the bytes again for the offset
        raise ConverterError(not_utf8_problem(path)) from None


def load_json(path: Path) -> Any:
    with open_annotation(path) as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as err:
            raise ConverterError(
                f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
            ) from None


def load_csv(path: Path, columns: Iterable[str]) -> list[Entry]:
    """The rows of a CSV file with a header holding ``columns``; rows are named by line."""
    with open_annotation(path) as file:
        reader = csv.DictReader(file)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ConverterError(
                f"{path}: header lacks column(s) {', '.join(missing)} (has: {reader.fieldnames})"
            )
        return [Entry(row, f"line {reader.line_num}", str(path)) for row in reader]


def load_lines(path: Path) -> list[str]:
    """The lines of a text file, without their ends (``\\n`` or ``\\r\\n``)."""
    with open_annotation(path) as file:
        return file.read().splitlines()


def group_by(items: Iterable[T], key: Callable[[T], Hashable]) -> dict[Hashable, list[T]]:
    """Items grouped by key, groups and items in order of first appearance."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def _there(path: Path) -> bool:
    # a link counts: reading a git-annex link without its content says what to do about it
    return path.is_file() or path.is_symlink()


def present_splits(
    root: Path, files: dict[str, list[str]], shared: Iterable[str] = ()
) -> dict[str, list[Path]]:
    """The splits whose annotation files are under root, each with its ``files`` and then the
    ``shared`` ones every split needs (datasets often come split by split).

    A split none of whose own files is there is skipped (and logged). A split with only some of
    its own files, or without a shared file, is an error, and so is finding no split at all.
    """
    shared_paths = [root / name for name in shared]
    present = {}
    for split, names in files.items():
        paths = [root / name for name in names]
        found = [p for p in paths if _there(p)]
        if not found:
            log.info("%s split skipped: %s not found", split, ", ".join(map(str, paths)))
            continue
        missing = [p for p in [*paths, *shared_paths] if not _there(p)]
        if missing:
            beside = ", ".join(p.name for p in found)
            raise ConverterError(
                f"{missing[0]}: not found (the {split} split needs it beside {beside})"
            )
        present[split] = [*paths, *shared_paths]
    if not present:
        expected = sorted({str(root / n) for names in files.values() for n in names})
        beside = f" (each beside {', '.join(map(str, shared_paths))})" if shared_paths else ""
        raise ConverterError(f"no annotation files found; expected {', '.join(expected)}{beside}")
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
    are relative to ``root`` and become relative to ``out``.

    Missing media files are counted and logged; with ``check_media`` they are an error instead,
    listed in full in ``out/missing_media.txt``, and no manifest is written.
    """
    _check_ids(samples)
    _check_media(samples, root, out, check_media)
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


def _check_ids(samples: list[Sample]) -> None:
    """Ids unique across all splits (manifests get merged)."""
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise ConverterError(f"two samples have the id {sample.id!r}")
        seen.add(sample.id)


MISSING_LIST = "missing_media.txt"
EXAMPLES = 3  # missing files named in the warning
LISTED = 20  # and in the error, which points at the full list


def _check_media(samples: list[Sample], root: Path, out: Path, check_media: bool) -> None:
    """Say how many media files are missing: a warning, or with ``check_media`` an error that
    names them all (in a file: there may be a million)."""
    media = {m: None for s in samples for m in s.media}  # distinct, in order
    missing = [root / m for m in media if not os.path.isfile(root / m)]
    listing = out / MISSING_LIST
    if not missing:
        listing.unlink(missing_ok=True)  # a list left by an earlier run is stale now
        return
    counted = f"{len(missing)} of {len(media)} media files are missing"
    if not check_media:
        examples = "; ".join(map(str, missing[:EXAMPLES]))
        log.warning(
            "%s (e.g. %s); the manifests point at them all the same: download them before "
            "training, or run with --check-media (check_media=True) to list them",
            counted,
            examples,
        )
        return
    out.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{path}\n" for path in missing), encoding="utf-8")
    first = "; ".join(map(str, missing[:LISTED]))
    more = f" (first {LISTED})" if len(missing) > LISTED else ""
    raise ConverterError(
        f"{counted}, all listed in {listing}; no manifest written. Missing{more}: {first}"
    )
