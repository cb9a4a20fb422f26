"""Video perceivers: HF video transformers ("video") and any image perceiver run per frame ("frames").

Clips are cut to the backbone's frame count with eP-ALM's segment sampling (``epalm.data.media``).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from typing import Any

import torch

from epalm.data.media import load_clip, sample_frames
from epalm.encoders.backbone import HFPerceiver
from epalm.encoders.base import Perceiver
from epalm.encoders.image import ImagePreprocessing, image_stats
from epalm.encoders.registry import build_perceiver, register_perceiver

# Which frame of each segment a test clip shows: the middle one, or, as eP-ALM's code
# (``sample_type: 'rand'`` at evaluation too, dataset/video_vqa.py:146, video_caption.py:182),
# a random one, drawn from a seed of the clip's own so that every evaluation sees the same.
TEST_FRAMES = ("middle", "random")


def _check_test_frames(test_frames: str) -> str:
    if test_frames not in TEST_FRAMES:
        raise ValueError(f"test_frames={test_frames!r} is not one of {', '.join(TEST_FRAMES)}")
    return test_frames


def draw_frames(
    read: Callable[..., Any], media: Any, num_frames: int, *, train: bool, test_frames: str
) -> Any:
    """``read(media, num_frames, train=...)`` with segment frames random in training and, when
    ``test_frames="random"``, at test too (seeded by the clip's path)."""
    if train or test_frames == "middle":
        return read(media, num_frames, train=train)
    seed = zlib.crc32(os.fspath(media).encode()) if isinstance(media, (str, os.PathLike)) else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return read(media, num_frames, train=True)


# --- HF video transformers ---------------------------------------------------------------------
@register_perceiver("video")
class HFVideoPerceiver(ImagePreprocessing, HFPerceiver):
    """An HF video transformer on ``[T, 3, H, W]`` clips: TimeSformer (CLS), VideoMAE (mean)."""

    modality = "video"

    def __init__(self, *args: Any, test_frames: str = "middle", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # HFPerceiver's arguments
        self.test_frames = _check_test_frames(test_frames)
        config = self.backbone.config
        self.num_frames = config.num_frames
        self.image_size = config.image_size
        self.image_mean, self.image_std = image_stats(self.source["model"], config.model_type)

    def preprocess(self, media: Any, *, train: bool = False) -> dict[str, torch.Tensor]:
        # one transform call for the whole clip: in training every frame gets the same crop
        clip = draw_frames(
            load_clip, media, self.num_frames, train=train, test_frames=self.test_frames
        )
        return {"pixel_values": self.transform(train)(clip)}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "test_frames": self.test_frames}


# --- any image perceiver, frame by frame -------------------------------------------------------
@register_perceiver("frames")
class FramesPerceiver(Perceiver):
    """Video through any image perceiver: each layer is summarised per frame by the image
    perceiver's own rule, then pooled over frames.

    ``pool="mean"`` averages the frames, which cannot tell a clip from its reverse;
    ``"mean+delta"`` appends the mean of the later half minus that of the earlier half (twice
    the width), which keeps the direction of change: a linear probe on DINOv2-S [CLS] features
    of shapes-video tells the direction of motion 93% right from it, 48% from the mean alone.
    """

    modality = "video"
    POOLS = ("mean", "mean+delta")

    def __init__(
        self,
        image: dict[str, Any],
        num_frames: int = 8,
        pool: str = "mean",
        test_frames: str = "middle",
    ) -> None:
        super().__init__()
        self.test_frames = _check_test_frames(test_frames)
        if pool not in self.POOLS:
            raise ValueError(
                f"FramesPerceiver pools frames by {' or '.join(self.POOLS)}, not {pool!r}"
            )
        options = dict(image)
        self.image = build_perceiver(options.pop("name", "image"), **options)
        self.num_frames, self.pool = num_frames, pool
        width = self.image.hidden_size
        self.hidden_size = 2 * width if pool == "mean+delta" else width
        self.num_levels = self.image.num_levels
        self.summary = self.image.summary

    def preprocess(self, media: Any, *, train: bool = False) -> dict[str, torch.Tensor]:
        frames = draw_frames(
            sample_frames, media, self.num_frames, train=train, test_frames=self.test_frames
        )
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
        return self._pool(per_frame.unflatten(0, (batch, frames)))  # [b, frames, levels, h]

    def _pool(self, clip: torch.Tensor) -> torch.Tensor:
        """``[batch, frames, ...]`` -> ``[batch, ...]`` by ``pool``."""
        mean = clip.mean(dim=1)
        if self.pool == "mean":
            return mean
        frames, half = clip.shape[1], clip.shape[1] // 2
        return torch.cat([mean, clip[:, frames - half :].mean(1) - clip[:, :half].mean(1)], -1)

    def first_changed_block(self) -> int | None:
        return self.image.first_changed_block()

    def block_input(self, start: int, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every frame's: ``{"hidden": [batch, frames, tokens, dim], "mask": [batch, frames,
        tokens]}``."""
        batch, frames = next(iter(inputs.values())).shape[:2]
        per_frame = self.image.block_input(start, **{k: v.flatten(0, 1) for k, v in inputs.items()})
        return {key: value.unflatten(0, (batch, frames)) for key, value in per_frame.items()}

    def from_block(self, start: int, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, frames = hidden.shape[:2]
        per_frame = self.image.from_block(start, hidden.flatten(0, 1), mask.flatten(0, 1))
        return self._pool(per_frame.unflatten(0, (batch, frames)))

    @property
    def token_size(self) -> int:
        return self.image.token_size

    @property
    def token_frames(self) -> int:
        return self.num_frames

    def tokens(self, levels: int, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every frame's tokens, frame after frame: ``[batch, levels, frames x tokens, dim]``."""
        batch, frames = next(iter(inputs.values())).shape[:2]
        per_frame = self.image.tokens(levels, **{k: v.flatten(0, 1) for k, v in inputs.items()})
        tokens = per_frame["tokens"].unflatten(0, (batch, frames))  # [b, f, levels, t, dim]
        tokens = tokens.transpose(1, 2).flatten(2, 3)
        return {
            "tokens": tokens,
            "mask": per_frame["mask"].unflatten(0, (batch, frames)).flatten(1),
        }

    def preprocessing(self) -> dict[str, Any]:
        return self.image.preprocessing()

    def config(self) -> dict[str, Any]:
        image = {"name": self.image.registry_name, **self.image.config()}
        return {
            "image": image,
            "num_frames": self.num_frames,
            "pool": self.pool,
            "test_frames": self.test_frames,
        }
