"""Torch Datasets over manifest samples: each item's media decoded and preprocessed by the
perceiver of its modality, with bad files either raised or handed back as error items
(``MediaDataset``), or its features read from a feature cache (``FeatureDataset``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from epalm.data.manifest import Sample
from epalm.data.media import SAMPLING_RATE, MediaError, load_audio, read_image, read_video
from epalm.encoders.base import Perceiver

ON_BAD_SAMPLE = ("error", "skip")


class BadSampleError(ValueError):
    """A sample whose media cannot be decoded or preprocessed; names the sample and the file."""


class MediaDataset(Dataset):
    """``{"sample", "inputs": {slot: preprocessed media}}`` per sample; the slot is the
    sample's modality.

    A sample's first media path is its media (multi-file samples are not perceived yet). With
    ``on_bad_sample="skip"``, a sample that fails comes back as ``{"sample", "error"}`` instead,
    for the collator to drop and report: nothing is skipped silently.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        perceivers: Mapping[str, Perceiver],
        *,
        train: bool,
        on_bad_sample: str = "error",
        video_backend: str = "pyav",
    ) -> None:
        if on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {on_bad_sample!r}")
        for sample in samples:
            if sample.modality not in perceivers:
                raise ValueError(
                    f"sample {sample.id!r} has modality {sample.modality!r}, but the perceivers "
                    f"are {sorted(perceivers)}"
                )
        self.samples, self.perceivers = list(samples), dict(perceivers)
        self.train, self.on_bad_sample, self.video_backend = train, on_bad_sample, video_backend

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        perceiver, path = self.perceivers[sample.modality], sample.media_paths[0]
        try:
            inputs = preprocess_file(
                path, perceiver, train=self.train, video_backend=self.video_backend
            )
        except MediaError as err:
            if self.on_bad_sample == "skip":
                return {"sample": sample, "error": str(err)}
            raise BadSampleError(f"sample {sample.id!r}: {err}") from err
        return {"sample": sample, "inputs": {sample.modality: inputs}}


class FeatureDataset(Dataset):
    """``{"sample", "features": {slot: [levels, hidden]}}`` per sample, from perceiver outputs
    computed earlier (``FeatureCache.load``); the slot is the sample's modality.

    ``features`` maps each slot to ``{str(media path): features}``. A sample whose first media
    path is not there raises here, naming it (so a mismatch fails before training starts); with
    ``on_bad_sample="skip"`` (files that ``FeatureCache.fill`` skipped as bad) it comes back as
    ``{"sample", "error"}``, for the collator to drop and report, as ``MediaDataset`` does.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        features: Mapping[str, Mapping[str, torch.Tensor]],
        *,
        on_bad_sample: str = "error",
    ) -> None:
        if on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {on_bad_sample!r}")
        absent = [s for s in samples if self._path(s) not in features.get(s.modality, {})]
        if absent and on_bad_sample == "error":
            named = ", ".join(f"{s.id!r} ({s.modality}: {self._path(s)})" for s in absent[:3])
            raise ValueError(
                f"no features for {len(absent)} of {len(samples)} samples, e.g. {named}; "
                f"slots given: {sorted(features)}"
            )
        self.samples, self.features = list(samples), features

    @staticmethod
    def _path(sample: Sample) -> str:
        return str(sample.media_paths[0])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        slot, path = sample.modality, self._path(sample)
        feats = self.features.get(slot, {}).get(path)
        if feats is None:
            return {"sample": sample, "error": f"{path}: no cached features (a bad file?)"}
        return {"sample": sample, "features": {slot: feats}}


def decode(path: Any, perceiver: Perceiver, *, train: bool, video_backend: str = "pyav") -> Any:
    """The file as the built-in modalities' arrays; other modalities get the path itself."""
    if perceiver.modality == "image":
        return read_image(path)
    num_frames = getattr(perceiver, "num_frames", None)
    if perceiver.modality == "video" and num_frames:
        # already segment-sampled: the perceiver's own sampling of N from N keeps them all
        return read_video(path, num_frames, train=train, backend=video_backend)
    if perceiver.modality == "audio":
        return load_audio(path, getattr(perceiver, "sampling_rate", SAMPLING_RATE))
    return path


def preprocess_file(
    path: Any, perceiver: Perceiver, *, train: bool, video_backend: str = "pyav"
) -> dict[str, torch.Tensor]:
    """One file decoded and preprocessed for ``perceiver``; any failure is a MediaError that
    starts with the file (a preprocessing error, e.g. a shape mismatch, included)."""
    try:
        return perceiver.preprocess(
            decode(path, perceiver, train=train, video_backend=video_backend), train=train
        )
    except MediaError:
        raise
    except Exception as err:
        raise MediaError(f"{path}: {err!r}") from err
