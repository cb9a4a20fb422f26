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
from epalm.training.settings import MultitaskSettings, RunSettings, SettingsError

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
        if s.task == settings.task.sample_kind and s.modality == settings.modality
    ]
    if not samples:
        raise SettingsError(
            f"{path}: no {settings.task.sample_kind} samples of modality {settings.modality!r}"
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
            yield from self.micro_batches(step)

    def micro_batches(self, step: int) -> list[list[tuple[int, int]]]:
        """This rank's ``grad_accum`` micro-batches of global step ``step``."""
        parts = []
        for part in range(self.grad_accum):
            first = step * self.batch_size + (part * self.world_size + self.rank) * self.micro
            parts.append([(self.index(p), p) for p in range(first, first + self.micro)])
        return parts

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.num_samples, generator=generator)
        return int(self._order[offset])


def task_weights(sizes: Sequence[int], temperature: float = 1.0) -> list[float]:
    """How often each task is trained: ``p ~ n ** (1 / temperature)`` for ``n`` training
    samples (1: proportional to the sizes; larger: flatter, towards uniform)."""
    return normalised([n ** (1.0 / temperature) for n in sizes])


def task_mix(
    names: Sequence[str], sizes: Sequence[int], multitask: MultitaskSettings
) -> list[float]:
    """Each task's share of the steps: ``multitask.weights`` where given, else the temperature
    rule over the tasks' training sizes."""
    if multitask.weights:
        return normalised([multitask.weights[name] for name in names])
    return task_weights(sizes, multitask.temperature)


def normalised(weights: Sequence[float]) -> list[float]:
    """Relative weights as probabilities that sum to 1."""
    return [w / sum(weights) for w in weights]


class TaskSampler:
    """Micro-batches of ``(task, index, position)`` for one rank, step by step: each global step
    trains one task (every micro-batch and process of it: homogeneous batches), drawn with
    ``weights`` from a seeded stream; a task's k-th step takes the k-th batch of its own
    ``StepSampler`` (seed + task), so one task alone is exactly its ``StepSampler``, and which
    samples a step sees stays a pure function of (seed, step, rank)."""

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        *,
        batch_size: int,
        steps: int,
        seed: int,
        start_step: int = 0,
        grad_accum: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.samplers = [
            StepSampler(
                n,
                batch_size=batch_size,
                steps=steps,
                seed=seed + task,
                grad_accum=grad_accum,
                rank=rank,
                world_size=world_size,
            )
            for task, n in enumerate(sizes)
        ]
        self.micro, self.grad_accum = self.samplers[0].micro, grad_accum
        self.steps, self.start_step = steps, start_step
        self.order = _task_order(weights, steps, seed)

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.grad_accum

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        taken = [0] * len(self.samplers)  # steps each task has had
        for step, task in enumerate(self.order):
            local, taken[task] = taken[task], taken[task] + 1
            if step < self.start_step:
                continue
            for part in self.samplers[task].micro_batches(local):
                yield [(task, index, position) for index, position in part]


def _task_order(weights: Sequence[float], steps: int, seed: int) -> list[int]:
    """The task of every step, from a generator of its own (one task: all zeros)."""
    if len(weights) == 1:
        return [0] * steps
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 7)
    chosen = torch.multinomial(
        torch.tensor(weights, dtype=torch.float64), steps, replacement=True, generator=generator
    )
    return chosen.tolist()


class TaskItems(Dataset):
    """Items by ``(task, index, position)`` from one dataset per task, each tagged with its task
    name; every RNG is seeded as ``Positioned`` does, from (seed + task, position)."""

    def __init__(self, datasets: Mapping[str, Dataset], seed: int) -> None:
        self.names = list(datasets)
        self.datasets = [Positioned(d, seed + t) for t, d in enumerate(datasets.values())]

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: tuple[int, int, int]) -> Any:
        task, index, position = key
        return {**self.datasets[task][(index, position)], "task": self.names[task]}


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
