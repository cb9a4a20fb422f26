"""Video perceivers: HF video transformers ("video") and any image perceiver run per frame ("frames").

Clips are cut to the backbone's frame count with eP-ALM's segment sampling.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from epalm.encoders.backbone import HFPerceiver
from epalm.encoders.base import Perceiver
from epalm.encoders.image import ImagePreprocessing, image_stats, load_image
from epalm.encoders.registry import build_perceiver, register_perceiver


# --- frame sampling and decoding ---------------------------------------------------------------
def segment_indices(total: int, num: int, *, train: bool = False) -> list[int]:
    """Split ``total`` frames into ``num`` equal segments and take the middle frame of each (a
    random one in training). With fewer frames than segments, frames repeat in order."""
    if total < 1:
        raise ValueError("cannot sample frames from an empty clip")
    edges = torch.linspace(0, total, num + 1, dtype=torch.float64)
    where = torch.rand(num) if train else torch.full((num,), 0.5)  # position within a segment
    position = edges[:-1] + (edges[1:] - edges[:-1]) * where
    return position.floor().long().clamp(0, total - 1).tolist()


def _count_frames(container: Any, stream: Any) -> int:
    if stream.frames > 0:
        return stream.frames
    # the container does not say: count by decoding, then rewind
    total = sum(1 for _ in container.decode(stream))
    container.seek(0)
    return total


def read_video(path: str | os.PathLike, num_frames: int, *, train: bool = False) -> np.ndarray:
    """Decode ``num_frames`` segment-sampled RGB frames ``[T, H, W, 3]`` uint8 with PyAV."""
    import av  # only video files need it

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        wanted = segment_indices(_count_frames(container, stream), num_frames, train=train)
        # decode in order, converting only the frames we keep
        kept: dict[int, np.ndarray] = {}
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                kept[index] = frame.to_ndarray(format="rgb24")
            if index >= wanted[-1]:
                break
    if not kept:
        raise ValueError(f"no frames decoded from {path}")
    # a header may overstate the length: frames past the real end repeat the last one kept
    return np.stack([kept.get(i, kept[max(kept)]) for i in wanted])


def sample_frames(media: Any, num_frames: int, *, train: bool = False) -> Sequence[Any]:
    """A video path, a sequence of frames, ``[T, H, W, 3]`` array or ``[T, 3, H, W]`` tensor ->
    ``num_frames`` of its frames (still raw: each one is anything ``load_image`` reads)."""
    if isinstance(media, (str, os.PathLike)):
        return read_video(media, num_frames, train=train)
    return [media[i] for i in segment_indices(len(media), num_frames, train=train)]


def load_clip(media: Any, num_frames: int, *, train: bool = False) -> torch.Tensor:
    """Raw video -> ``[num_frames, 3, H, W]`` (frames must share one size)."""
    return torch.stack(
        [load_image(frame) for frame in sample_frames(media, num_frames, train=train)]
    )


# --- HF video transformers ---------------------------------------------------------------------
@register_perceiver("video")
class HFVideoPerceiver(ImagePreprocessing, HFPerceiver):
    """An HF video transformer on ``[T, 3, H, W]`` clips: TimeSformer (CLS), VideoMAE (mean)."""

    modality = "video"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # HFPerceiver's arguments
        super().__init__(*args, **kwargs)
        config = self.backbone.config
        self.num_frames = config.num_frames
        self.image_size = config.image_size
        self.image_mean, self.image_std = image_stats(self.source["model"], config.model_type)

    def preprocess(self, media: Any, *, train: bool = False) -> dict[str, torch.Tensor]:
        # one transform call for the whole clip: in training every frame gets the same crop
        clip = load_clip(media, self.num_frames, train=train)
        return {"pixel_values": self.transform(train)(clip)}


# --- any image perceiver, frame by frame -------------------------------------------------------
@register_perceiver("frames")
class FramesPerceiver(Perceiver):
    """Video through any image perceiver: each layer is summarised per frame by the image
    perceiver's own rule, then averaged over frames."""

    modality = "video"

    def __init__(self, image: dict[str, Any], num_frames: int = 8, pool: str = "mean") -> None:
        super().__init__()
        if pool != "mean":
            raise ValueError(f"FramesPerceiver pools frames by 'mean' only, got {pool!r}")
        options = dict(image)
        self.image = build_perceiver(options.pop("name", "image"), **options)
        self.num_frames, self.pool = num_frames, pool
        self.hidden_size, self.num_levels = self.image.hidden_size, self.image.num_levels
        self.summary = self.image.summary

    def preprocess(self, media: Any, *, train: bool = False) -> dict[str, torch.Tensor]:
        frames = sample_frames(media, self.num_frames, train=train)
        # replay one random state for every frame, so augmentation is the same across the clip
        seed = int(torch.randint(2**31, ()))
        processed = [self._preprocess_frame(frame, seed, train) for frame in frames]
        return {key: torch.stack([p[key] for p in processed]) for key in processed[0]}

    def _preprocess_frame(self, frame: Any, seed: int, train: bool) -> dict[str, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.image.preprocess(frame, train=train)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        batch, frames = next(iter(inputs.values())).shape[:2]
        per_frame = self.image(**{key: value.flatten(0, 1) for key, value in inputs.items()})
        return per_frame.unflatten(0, (batch, frames)).mean(dim=1)

    def config(self) -> dict[str, Any]:
        image = {"name": self.image.registry_name, **self.image.config()}
        return {"image": image, "num_frames": self.num_frames, "pool": self.pool}
