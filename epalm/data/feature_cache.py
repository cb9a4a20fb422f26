"""A disk cache of frozen perceivers' outputs: each media file perceived once, reused by every run.

Perceivers are frozen, so with evaluation preprocessing (no augmentation) a file's features
``[num_levels, hidden_size]`` never change: training from the cache gives the same loss as
training from the media, without decoding or running the encoder at every step::

    cache = FeatureCache(model.perceivers["image"])  # <cache>/features/image-<key[:16]>/
    cache.fill(paths)  # computes what is missing (every rank its share; then a barrier)
    features = cache.load(paths)  # {str(path): float32 [num_levels, hidden_size]}
    dataset = FeatureDataset(samples, {"image": features})

Connectors that read tokens (``all-tokens``, ``token-learner``, ...) need every token, not one
summary per layer: ``FeatureCache(perceiver, tokens=levels)`` stores the tokens of the last
``levels`` layers in float16 with their mask (``epalm.encoders.base.token_features``), under a
key of its own, and ``load`` gives ``{str(path): {"tokens": [levels, T, dim], "mask": [T]}}``.
``size_on_disk()`` says what a cache takes (tokens take about T times a summary's room).

Where only the top blocks of a perceiver train (a dual encoder's ``align=last-layers``), the
frozen blocks below still give each file one hidden state: ``FeatureCache(perceiver, below=k)``
stores what enters block ``k`` (``Perceiver.block_input``), float32 with its mask, and ``load``
gives ``{str(path): {"hidden": [..., T, dim], "mask": [..., T]}}`` for ``Perceiver.from_block``.

Layout: one directory per perceiver *key*, a digest of its registry name, its ``config()``
(which holds preprocessing settings such as ``image_size`` and ``num_frames``), a digest of its
weights and ``FORMAT_VERSION``, so different settings or weights behind one name never share
features. Inside it, ``info.json`` says what the key stands for, and each entry is
``<sha[:2]>/<sha>.safetensors``, keyed by the sha256 of the media file's *bytes*: an edited file
is a miss, a copied or renamed one a hit. Entries are written to a temporary file and renamed
into place (``epalm.atomic``), so a killed run never leaves a half entry under an entry's name,
and two processes writing one entry are safe; an entry that is corrupt anyway (a disk fault) is
detected by its size and computed again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from epalm.atomic import atomic_write, atomic_write_text
from epalm.data.dataset import ON_BAD_SAMPLE, preprocess_file
from epalm.data.media import MediaError, check_file
from epalm.encoders.base import Perceiver, token_features
from epalm.fingerprint import weights_sha256
from epalm.zoo.cache import cache_root, sha256_of

log = logging.getLogger(__name__)

#: Bumped whenever what an entry holds changes; part of every key, so old entries are never read.
FORMAT_VERSION = 1
TENSOR = "features"  # the one tensor in an entry
MAX_HEADER = 1 << 20  # an entry's safetensors header is ~100 bytes; more means a corrupt file

_SHA_MEMO: dict[tuple[str, int, int], str] = {}


class NotCachedError(LookupError):
    """Files whose features are not in the cache; the message names each file and why."""


@dataclass
class FillReport:
    """What one ``FeatureCache.fill`` call did. Counts are of distinct file contents."""

    computed: int = 0  # entries this call computed and wrote
    cached: int = 0  # entries already in the cache
    other_ranks: int = 0  # missing entries left to the other ranks
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of bad files


def content_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, memoised per process by (path, size, mtime)."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = sha256_of(Path(path))
    return _SHA_MEMO[key]


def perceiver_name(perceiver: Perceiver) -> str:
    return perceiver.registry_name or type(perceiver).__name__


def perceiver_spec(
    perceiver: Perceiver,
    video_backend: str = "pyav",
    tokens: int | None = None,
    below: int | None = None,
) -> dict[str, Any]:
    """Everything a cached feature depends on besides the file: what ``FeatureCache.key`` hashes.
    (Summaries' specs are as before tokens existed, so their caches stay valid.)"""
    spec = {
        "format": FORMAT_VERSION,
        "perceiver": perceiver_name(perceiver),
        "config": perceiver.config(),
        "preprocessing": perceiver.preprocessing(),
        "weights_sha256": weights_sha256(perceiver),
    }
    if perceiver.modality == "video":  # decoders may disagree on a frame's pixels
        spec["video_backend"] = video_backend
    if tokens is not None:
        spec["tokens"] = {"levels": tokens, "dtype": "float16"}
    if below is not None:
        spec["block_input"] = {"block": below, "dtype": "float32"}
    return spec


class FeatureCache:
    """The on-disk features of one frozen perceiver, keyed by media file content.

    ``key`` is the hex digest of ``perceiver_spec`` (what the features depend on besides the
    file); ``directory`` is where this perceiver's entries and ``info.json`` live.

    ``cache_dir`` is epalm's cache root (default: ``$EPALM_CACHE`` or ``~/.cache/epalm``); the
    features live under ``<root>/features/<perceiver name>-<key[:16]>``. Creating a cache hashes
    the perceiver's weights once (well under a second for small encoders).

    Distributed runs: every rank calls ``fill(paths, rank=rank, world_size=world_size)`` with the
    same paths, which computes only that rank's share of the missing files; then the caller runs
    a barrier (``accelerator.wait_for_everyone()``, ``torch.distributed.barrier()``), and every
    rank calls ``load(paths)``.
    """

    key: str
    directory: Path

    def __init__(
        self,
        perceiver: Perceiver,
        cache_dir: str | os.PathLike | None = None,
        *,
        video_backend: str = "pyav",
        tokens: int | None = None,
        below: int | None = None,
    ) -> None:
        """``tokens``: store the tokens of the last ``tokens`` levels (for connectors that read
        tokens) instead of every level's summary; ``below``: what enters block ``below``."""
        if tokens is not None and not 1 <= tokens <= perceiver.num_levels:
            raise ValueError(f"tokens={tokens}: the perceiver has {perceiver.num_levels} levels")
        if below is not None and (tokens is not None or not 0 < below < perceiver.num_levels):
            raise ValueError(
                f"below={below}: a block of 1..{perceiver.num_levels - 1}, without tokens"
            )
        self.perceiver, self.video_backend = perceiver, video_backend
        self.tokens, self.below = tokens, below
        self._layout = _TOKENS if tokens is not None else _BLOCK if below is not None else _SUMMARY
        spec = perceiver_spec(perceiver, video_backend, tokens, below)
        self.key = hashlib.sha256(_canonical(spec).encode()).hexdigest()
        suffix = "-tokens" if tokens is not None else f"-block{below}" if below is not None else ""
        name = perceiver_name(perceiver) + suffix
        self.directory = cache_root(cache_dir) / "features" / f"{name}-{self.key[:16]}"
        self._write_info(spec)

    def _write_info(self, spec: dict[str, Any]) -> None:
        info = self.directory / "info.json"
        if not info.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(info, _canonical({**spec, "key": self.key}, indent=2) + "\n")

    def entry(self, sha: str) -> Path:
        """Where the features of a file with this content sha256 live."""
        return self.directory / sha[:2] / f"{sha}.safetensors"

    # --- queries -----------------------------------------------------------------------------
    def missing(self, paths: Iterable[str | os.PathLike]) -> list[Path]:
        """The files (each once, in order) without a valid entry; unreadable files included."""
        absent = []
        for path in dict.fromkeys(map(str, paths)):
            try:
                cached = _valid_entry(self.entry(content_sha256(path)), self._layout)
            except OSError:
                cached = False
            if not cached:
                absent.append(Path(path))
        return absent

    def size_on_disk(self) -> int:
        """Bytes this cache's entries take."""
        return sum(entry.stat().st_size for entry in self.directory.glob("*/*.safetensors"))

    def load(
        self, paths: Iterable[str | os.PathLike], *, levels: int | None = None
    ) -> dict[str, Any]:
        """``{str(path): float32 [num_levels, hidden_size]}`` (or, for tokens, ``{"tokens":
        float16 [levels, T, dim], "mask": [T]}``; for a block's input, ``{"hidden", "mask"}``)
        for every file, or a ``NotCachedError`` naming
        each file that is not cached. ``levels`` keeps only the last (deepest) that many levels
        of summaries, which is all a connector uses."""
        features, problems = {}, []
        for path in dict.fromkeys(map(str, paths)):
            try:
                entry = self.entry(content_sha256(path))
            except OSError as err:
                problems.append(f"{path}: cannot read the file ({err.strerror or err})")
                continue
            try:
                features[path] = _read_entry(entry, self._layout, levels)
            except FileNotFoundError:
                problems.append(f"{path}: not cached")
            except Exception as err:
                problems.append(f"{path}: corrupt entry {entry} ({err}); fill() recomputes it")
        if problems:
            shown = "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else "")
            raise NotCachedError(
                f"{len(problems)} of {len(features) + len(problems)} files have no features in "
                f"{self.directory}:\n  {shown}\nRun FeatureCache.fill(paths) first (on every "
                "rank, then a barrier)."
            )
        return features

    # --- filling -----------------------------------------------------------------------------
    def fill(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 32,
        num_workers: int = 0,
        on_bad_sample: str = "error",
        progress: bool = True,
    ) -> FillReport:
        """Compute and store the features of the files not cached yet (evaluation preprocessing).

        Files with the same content are computed once. Ranks share the work by content: the
        distinct contents of ``paths``, sorted by sha256, go to rank ``index % world_size``,
        which depends neither on timing nor on what is cached (so ranks that start at different
        times still cover every file); each rank computes only its own missing ones. Call it
        on every rank with the same paths, run a barrier, then ``load``.

        Files are decoded in a DataLoader (``num_workers`` processes) and run through the
        perceiver on its own device, in batches of up to ``batch_size`` files whose inputs have
        equal shapes: nothing is padded, so each entry is what the perceiver gives that file on
        its own. A bad file (missing, empty, undecodable) raises a ``MediaError`` naming it with
        ``on_bad_sample="error"``; with ``"skip"`` it is logged and listed in the report's
        ``skipped``, and the other files are cached.
        """
        if on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {on_bad_sample!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        report = FillReport()
        by_sha = self._hash(paths, on_bad_sample, report)
        todo = []
        for index, sha in enumerate(sorted(by_sha)):
            if _valid_entry(self.entry(sha), self._layout):
                report.cached += 1
            elif index % world_size == rank:
                todo.append((sha, by_sha[sha]))
            else:
                report.other_ranks += 1
        if todo:
            self._compute(todo, batch_size, num_workers, on_bad_sample, progress, report)
        log.info(
            "feature cache %s (rank %d of %d): computed %d, already cached %d, left to other "
            "ranks %d, skipped %d bad files; %.1f MB on disk",
            self.directory,
            rank,
            world_size,
            report.computed,
            report.cached,
            report.other_ranks,
            len(report.skipped),
            self.size_on_disk() / 1e6,
        )
        return report

    def _hash(
        self, paths: Iterable[str | os.PathLike], on_bad_sample: str, report: FillReport
    ) -> dict[str, str]:
        """``{sha256: first path with that content}``; unreadable files are bad samples."""
        by_sha: dict[str, str] = {}
        for path in sorted(dict.fromkeys(map(str, paths))):
            try:
                sha = content_sha256(check_file(path))
            except (MediaError, OSError) as err:
                reason = str(err) if isinstance(err, MediaError) else f"{path}: {err.strerror}"
                self._bad(reason, path, on_bad_sample, report)
                continue
            by_sha.setdefault(sha, path)
        return by_sha

    def _bad(self, reason: str, path: str, on_bad_sample: str, report: FillReport) -> None:
        if on_bad_sample == "error":
            raise MediaError(
                f"{reason} (computing features for {self.directory}; on_bad_sample='skip' "
                "skips and reports bad files)"
            )
        log.warning("feature cache: skipping %s", reason)
        report.skipped.append((path, reason))

    def _compute(
        self,
        todo: list[tuple[str, str]],
        batch_size: int,
        num_workers: int,
        on_bad_sample: str,
        progress: bool,
        report: FillReport,
    ) -> None:
        files = _Files(todo, self.perceiver, self.video_backend)
        loader = DataLoader(files, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
        device = _device(self.perceiver)
        desc = f"features {perceiver_name(self.perceiver)}"
        with tqdm(total=len(todo), desc=desc, unit="file", disable=not progress) as bar:
            for items in loader:
                good = []
                for item in items:
                    if "error" in item:
                        self._bad(item["error"], item["path"], on_bad_sample, report)
                    else:
                        good.append(item)
                for group in _same_shapes(good):
                    for item, features in zip(group, self._encode(group, device)):
                        self._write(item["sha"], features)
                        report.computed += 1
                bar.update(len(items))

    def _encode(self, items: list[dict[str, Any]], device: torch.device) -> list[dict]:
        """Each item's entry tensors, from one batch through the perceiver."""
        batch = self.perceiver.collate([item["inputs"] for item in items])
        inputs = {k: v.to(device) for k, v in batch.items()}
        if self.tokens is not None:
            out = {
                k: v.cpu() for k, v in token_features(self.perceiver, self.tokens, **inputs).items()
            }
            return [{name: out[name][i] for name in _TOKENS} for i in range(len(items))]
        if self.below is not None:
            with torch.no_grad():
                out = self.perceiver.block_input(self.below, **inputs)
            out = {"hidden": out["hidden"].float().cpu(), "mask": out["mask"].long().cpu()}
            return [{name: out[name][i] for name in _BLOCK} for i in range(len(items))]
        with torch.no_grad():
            summaries = self.perceiver(**inputs).float().cpu()
        return [{TENSOR: row} for row in summaries]

    def _write(self, sha: str, tensors: dict[str, torch.Tensor]) -> None:
        entry = self.entry(sha)
        entry.parent.mkdir(parents=True, exist_ok=True)
        # their own storage, not the batch's, and contiguous (safetensors requires it)
        owned = {k: v.clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
        atomic_write(entry, lambda tmp: save_file(owned, tmp))


def _canonical(data: dict[str, Any], indent: int | None = None) -> str:
    return json.dumps(data, indent=indent, sort_keys=True, default=str)


class _Files(Dataset):
    """Decodes and preprocesses (``train=False``) files for ``fill``; failures become items."""

    def __init__(self, todo: Sequence[tuple[str, str]], perceiver: Perceiver, backend: str):
        self.todo, self.perceiver, self.backend = list(todo), perceiver, backend

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sha, path = self.todo[index]
        try:
            inputs = preprocess_file(path, self.perceiver, train=False, video_backend=self.backend)
        except MediaError as err:
            return {"sha": sha, "path": path, "error": str(err)}
        return {"sha": sha, "path": path, "inputs": inputs}


def _same_shapes(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Items grouped by their inputs' shapes, so collating pads nothing."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for item in items:
        shapes = tuple((k, tuple(v.shape)) for k, v in sorted(item["inputs"].items()))
        groups.setdefault(shapes, []).append(item)
    return list(groups.values())


def _device(module: torch.nn.Module) -> torch.device:
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


# What an entry holds: tensor name -> safetensors dtype
_SUMMARY = {TENSOR: "F32"}
_TOKENS = {"tokens": "F16", "mask": "I64"}
_BLOCK = {"hidden": "F32", "mask": "I64"}


def _valid_entry(entry: Path, layout: dict[str, str]) -> bool:
    """Whether ``entry`` is a whole safetensors file with ``layout``'s tensors: its size must
    match its header."""
    try:
        with entry.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if length > MAX_HEADER:
                return False
            header = json.loads(f.read(length))
        infos = [header[name] for name in layout]
        end = max(info["data_offsets"][1] for info in infos)
        dtypes = all(info["dtype"] == dtype for info, dtype in zip(infos, layout.values()))
        return dtypes and entry.stat().st_size == 8 + length + end
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def _read_entry(entry: Path, layout: dict[str, str], levels: int | None) -> Any:
    if not _valid_entry(entry, layout):
        if not entry.exists():
            raise FileNotFoundError(entry)
        raise ValueError(f"truncated or not a features file ({', '.join(layout)})")
    # from bytes, not safe_open: its tensors stay memory-mapped, one map per file (a dataset
    # would run out of maps), and change if the file does
    tensors = load(entry.read_bytes())
    if layout is not _SUMMARY:
        return tensors
    tensor = tensors[TENSOR]
    return tensor if levels is None else tensor[-levels:].clone()
