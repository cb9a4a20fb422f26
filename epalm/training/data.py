"""A job's samples and batches: splits filtered to the task, a deterministic step sampler, and
loaders over cached features or decoded media.

Which samples a step sees is a pure function of (seed, step, rank), so a resumed run sees
exactly the batches an uninterrupted one would, and augmentation is seeded per sample position.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from epalm.data.dataset import FeatureDataset, MediaDataset
from epalm.data.manifest import Sample, read_manifest
from epalm.training.settings import RunSettings, SettingsError

log = logging.getLogger(__name__)


def data_root(settings: RunSettings) -> Path:
    """The manifests' directory: the embedded dataset (built on first use) or ``data.root``."""
    data = settings.data
    if data.embedded:
        from epalm.data.embedded import build_embedded

        return build_embedded(
            data.name, seed=data.seed, cache_dir=settings.model_cache, size=data.size
        )
    return Path(data.root)


def load_split(settings: RunSettings, split: str) -> list[Sample]:
    """The split's samples of this run's task and modality; an error names the manifest."""
    data = settings.data
    if split not in data.splits:
        raise SettingsError(f"data.splits has no {split!r} split; it has {sorted(data.splits)}")
    path = data_root(settings) / data.splits[split]
    samples = [
        s
        for s in read_manifest(path)
        if s.task == settings.task.name and s.modality == settings.modality
    ]
    if not samples:
        raise SettingsError(
            f"{path}: no {settings.task.name} samples of modality {settings.modality!r}"
        )
    return samples


def split_sources(settings: RunSettings, counts: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """Which file each split of ``counts`` (split -> samples used) was read from; logged, and
    said loudly when two splits read one file (VQAv2's test is its val2014)."""
    root = data_root(settings)
    sources = {
        split: {"file": os.path.abspath(root / settings.data.splits[split]), "samples": n}
        for split, n in counts.items()
    }
    by_file: dict[str, list[str]] = {}
    for split, source in sources.items():
        log.info("%s split: %d samples from %s", split, source["samples"], source["file"])
        by_file.setdefault(source["file"], []).append(split)
    for file, splits in by_file.items():
        if len(splits) > 1:
            log.warning(
                "the %s splits all read %s: data=%s maps them to one file (data.splits)",
                " and ".join(splits),
                file,
                settings.data.name,
            )
    return sources


def eval_samples(settings: RunSettings) -> list[Sample]:
    """The evaluation split, cut to ``eval.max_samples`` (in manifest order) when set."""
    samples = load_split(settings, settings.eval.split)
    return samples[: settings.eval.max_samples] if settings.eval.max_samples else samples


def one_per_caption(samples: Sequence[Sample]) -> list[Sample]:
    """Training pairs: a caption sample with k captions becomes k samples of one caption each
    (as COCO training iterates over image-caption pairs); questions stay as they are."""
    pairs = []
    for s in samples:
        if s.task != "caption" or len(s.captions) == 1:
            pairs.append(s)
            continue
        pairs += [
            dataclasses.replace(s, id=f"{s.id}#{k}", captions=[c]) for k, c in enumerate(s.captions)
        ]
    return pairs


def subset(samples: Sequence[Sample], limit: int | None, seed: int) -> list[Sample]:
    """A fixed random subset of at most ``limit`` samples (all when None), in manifest order."""
    if limit is None or limit >= len(samples):
        return list(samples)
    keep = sorted(random.Random(seed).sample(range(len(samples)), limit))
    return [samples[i] for i in keep]


class StepSampler:
    """Batches of ``(index, position)`` for one rank, step by step from ``start_step``.

    The sample stream is one seeded permutation per epoch, concatenated; global step ``s`` takes
    positions ``[s*B, (s+1)*B)`` and splits them into ``grad_accum`` micro-batches per rank.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        batch_size: int,
        steps: int,
        seed: int,
        start_step: int = 0,
        grad_accum: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % (grad_accum * world_size):
            raise SettingsError(
                f"train.batch_size={batch_size} must divide evenly over grad_accum={grad_accum} "
                f"x {world_size} processes"
            )
        self.num_samples, self.batch_size, self.steps = num_samples, batch_size, steps
        self.seed, self.start_step, self.grad_accum = seed, start_step, grad_accum
        self.rank, self.world_size = rank, world_size
        self.micro = batch_size // (grad_accum * world_size)
        self._epoch, self._order = -1, None

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.grad_accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.steps):
            for part in range(self.grad_accum):
                first = step * self.batch_size + (part * self.world_size + self.rank) * self.micro
                yield [(self.index(p), p) for p in range(first, first + self.micro)]

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.num_samples, generator=generator)
        return int(self._order[offset])


class Positioned(Dataset):
    """Items by ``(index, position)``: every RNG is seeded from (seed, position) first, so media
    augmentation is the same whichever worker or resumed run draws the sample."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, position = key
        seed = _derive(self.seed, position)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        return self.dataset[index]


def sample_dataset(
    samples: Sequence[Sample],
    settings: RunSettings,
    perceivers: Mapping[str, Any],
    features: Mapping[str, torch.Tensor] | None,
    *,
    train: bool,
) -> Dataset:
    """Items from cached ``features`` (str(path) -> tensor) when given, else decoded media."""
    if features is not None:
        return FeatureDataset(
            samples, {settings.modality: features}, on_bad_sample=settings.data.on_bad_sample
        )
    return MediaDataset(
        samples,
        perceivers,
        train=train and settings.train.augment,
        on_bad_sample=settings.data.on_bad_sample,
        video_backend=settings.data.video_backend,
    )


def batches(
    dataset: Dataset,
    collate: Any,
    *,
    batch_size: int | None = None,
    sampler: StepSampler | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """A loader of collated batches: by ``sampler`` (training) or in order (evaluation)."""
    workers = {"num_workers": num_workers, "persistent_workers": False}
    if num_workers:
        workers["multiprocessing_context"] = "fork" if _can_fork() else None
    if sampler is not None:
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, **workers)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, **workers)


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def _derive(seed: int, position: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
