"""epalm's model cache: entries built once, atomically, under a lock, and checked on every use.

Each entry is a directory holding a standard HF model plus ``epalm-manifest.json``: the size,
modification time and sha256 of every file, and where the model came from. An entry is built
in a temporary sibling directory and renamed into place only when complete, so a crash never
leaves a half-written entry that looks finished; a file lock makes two processes (two ranks of a
distributed run) that ask at once build it only once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)

MANIFEST = "epalm-manifest.json"
CACHE_ENV = "EPALM_CACHE"


_configured: ContextVar[str | None] = ContextVar("epalm_model_cache", default=None)


@contextmanager
def using_cache(directory: str | os.PathLike | None) -> Iterator[None]:
    """Within this block, the cache is ``directory`` (a config's ``model_cache``; None: unchanged)."""
    token = _configured.set(None if directory is None else str(directory))
    try:
        yield
    finally:
        _configured.reset(token)


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """``override``, else the configured cache (``using_cache``), else ``$EPALM_CACHE``, else
    ``$XDG_CACHE_HOME/epalm`` (``~/.cache/epalm``)."""
    override = override if override is not None else _configured.get()
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "epalm"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path, provenance: dict[str, Any]) -> None:
    files = {}
    for path in _files(directory):
        stat = path.stat()
        files[path.relative_to(directory).as_posix()] = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": sha256_of(path),
        }
    manifest = {"source": provenance, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST).read_text())


def problem_with(directory: Path) -> str | None:
    """Why a cache entry cannot be used, or None when it is complete and intact.

    Sizes are always checked; a file's sha256 is recomputed only when its modification time
    moved since it was recorded, which keeps a second use of a large model well under a second.
    """
    try:
        recorded = read_manifest(directory)["files"]
    except (OSError, ValueError, KeyError) as err:
        return f"no readable {MANIFEST} ({err})"
    present = {p.relative_to(directory).as_posix() for p in _files(directory)}
    if missing := sorted(set(recorded) - present):
        return f"missing files {missing}"
    for name, record in recorded.items():
        stat = (directory / name).stat()
        if stat.st_size != record["size"]:
            return f"{name} has {stat.st_size} bytes, expected {record['size']}"
        if (
            stat.st_mtime_ns != record["mtime_ns"]
            and sha256_of(directory / name) != record["sha256"]
        ):
            return f"{name} changed since it was written (sha256 mismatch)"
    return None


def verify(directory: Path) -> str | None:
    """Like ``problem_with`` but re-hashes every file regardless of modification times."""
    try:
        recorded = read_manifest(directory)["files"]
    except (OSError, ValueError, KeyError) as err:
        return f"no readable {MANIFEST} ({err})"
    for name, record in recorded.items():
        path = directory / name
        if not path.is_file() or sha256_of(path) != record["sha256"]:
            return f"{name} is missing or its sha256 does not match"
    return None


def build_entry(target: Path, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Return the intact entry at ``target``, building it with ``build(tmp_dir) -> provenance``.

    Safe against concurrent callers (file lock) and crashes (temporary directory + rename).
    A corrupt entry is moved aside, deleted and rebuilt.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_dir():
            problem = problem_with(target)
            if problem is None:
                return target  # built by another process while we waited
            log.warning("cache entry %s is broken (%s): rebuilding it", target, problem)
            _discard(target)
        for leftover in target.parent.glob(f".{target.name}.partial-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # from a build that was killed
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
        try:
            provenance = build(staging)
            write_manifest(staging, provenance)
            _share(staging)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _share(directory: Path) -> None:
    """Temporary directories and files are private (0700/0600); a cache is for every user."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _discard(directory: Path) -> None:
    """Move aside first (one rename), so a crash mid-delete never leaves a partial entry in place."""
    trash = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.broken-"))
    os.replace(directory, trash / directory.name)
    shutil.rmtree(trash, ignore_errors=True)
