"""A torch Dataset over manifest samples: each item's media decoded and preprocessed by the
perceiver of its modality, with bad files either raised or handed back as error items."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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
            inputs = perceiver.preprocess(self.decode(path, perceiver), train=self.train)
        except Exception as err:
            # a MediaError already starts with the file; a preprocessing error does not
            reason = str(err) if isinstance(err, MediaError) else f"{path}: {err!r}"
            if self.on_bad_sample == "skip":
                return {"sample": sample, "error": reason}
            raise BadSampleError(f"sample {sample.id!r}: {reason}") from err
        return {"sample": sample, "inputs": {sample.modality: inputs}}

    def decode(self, path: Any, perceiver: Perceiver) -> Any:
        """The file as the built-in modalities' arrays; other modalities get the path itself."""
        if perceiver.modality == "image":
            return read_image(path)
        num_frames = getattr(perceiver, "num_frames", None)
        if perceiver.modality == "video" and num_frames:
            # already segment-sampled: the perceiver's own sampling of N from N keeps them all
            return read_video(path, num_frames, train=self.train, backend=self.video_backend)
        if perceiver.modality == "audio":
            return load_audio(path, getattr(perceiver, "sampling_rate", SAMPLING_RATE))
        return path
