"""Image perceivers: HF vision transformers ("image") and timm ViTs ("timm-image").

Also the image transforms (eP-ALM's training augmentation) that the video perceivers reuse;
decoding lives in ``epalm.data.media``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn
from torchvision.transforms import v2
from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.utils import IMAGE_PROCESSOR_NAME, PROCESSOR_NAME

from epalm.data.media import load_image
from epalm.encoders.backbone import HFPerceiver, resolve_summary
from epalm.encoders.base import Perceiver
from epalm.encoders.registry import register_perceiver
from epalm.zoo import resolve

Stats = tuple[Sequence[float], Sequence[float]]

# Normalisation when a checkpoint brings no preprocessor config, by backbone family.
_DEFAULT_STATS: dict[str, Stats] = {
    "clip_vision_model": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "siglip_vision_model": (IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD),
}


# --- transforms -------------------------------------------------------------------------------
def image_transform(
    size: int, mean: Sequence[float], std: Sequence[float], *, train: bool = False
) -> v2.Compose:
    """eP-ALM's transform for ``[..., 3, H, W]`` images; one call shares its random draws over
    the leading dims, so the frames of a clip get the same crop and flip."""
    bicubic = v2.InterpolationMode.BICUBIC
    if train:
        geometry = [
            v2.RandomResizedCrop(size, scale=(0.5, 1.0), interpolation=bicubic, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        geometry = [v2.Resize(size, interpolation=bicubic, antialias=True), v2.CenterCrop(size)]
    return v2.Compose([*geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def image_stats(model: str | None, model_type: str) -> Stats:
    """Mean and std from the checkpoint's preprocessor config, else (a checkpoint without one,
    or a model built from a config) the family's defaults. A preprocessor config that exists
    but cannot be read is an error, never a silent fallback."""
    if model is not None:
        directory = resolve(model)
        if any((directory / name).is_file() for name in (IMAGE_PROCESSOR_NAME, PROCESSOR_NAME)):
            try:
                processor = AutoImageProcessor.from_pretrained(directory)
                return tuple(processor.image_mean), tuple(processor.image_std)
            except Exception as err:
                raise ValueError(
                    f"{directory}: its preprocessor config gives no image mean and std ({err})"
                ) from err
    return _DEFAULT_STATS.get(model_type, (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))


class ImagePreprocessing:
    """Mixin: ``preprocess`` for perceivers that set ``image_size``, ``image_mean``, ``image_std``."""

    image_size: int
    image_mean: Sequence[float]
    image_std: Sequence[float]

    def transform(self, train: bool = False) -> v2.Compose:
        return image_transform(self.image_size, self.image_mean, self.image_std, train=train)

    def preprocessing(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "image_mean": [float(x) for x in self.image_mean],
            "image_std": [float(x) for x in self.image_std],
        }

    def preprocess(self, media: Any, *, train: bool = False) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.transform(train)(load_image(media))}


# --- HF vision transformers -----------------------------------------------------------------
class VisionTower:
    """``load_model`` loader: the vision tower alone when a model pairs it with text (CLIP, SigLIP)."""

    @staticmethod
    def from_config(config: Any, **kwargs: Any) -> nn.Module:
        return AutoModel.from_config(getattr(config, "vision_config", config), **kwargs)

    @staticmethod
    def from_pretrained(path: str, **kwargs: Any) -> nn.Module:
        vision_config = getattr(AutoConfig.from_pretrained(path), "vision_config", None)
        # e.g. CLIPVisionModel.from_pretrained reads the vision half of a full CLIP checkpoint
        model_cls = AutoModel if vision_config is None else MODEL_MAPPING[type(vision_config)]
        return model_cls.from_pretrained(path, **kwargs)


@register_perceiver("image")
class HFImagePerceiver(ImagePreprocessing, HFPerceiver):
    """Any HF vision backbone with hidden states: ViT, DINOv2, CLIP and SigLIP vision towers."""

    modality = "image"
    loader = VisionTower

    def __init__(self, *args: Any, image_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.backbone.config
        # DINOv2 configs say 518 (its pretraining size); it interpolates, and 224 is 5x cheaper.
        default_size = 224 if config.model_type == "dinov2" else config.image_size
        self.image_size = image_size or default_size
        self.image_mean, self.image_std = image_stats(self.source["model"], config.model_type)

    def hidden_states(self, pixel_values: torch.Tensor) -> Sequence[torch.Tensor]:
        resized = pixel_values.shape[-1] != self.backbone.config.image_size
        extra = {"interpolate_pos_encoding": True} if resized else {}
        return super().hidden_states(pixel_values=pixel_values, **extra)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "image_size": self.image_size}


# --- timm ViTs ---------------------------------------------------------------------------------
def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A local weights file (safetensors or a torch pickle of plain tensors)."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common training-checkpoint wrappers
        state = state.get(key, state)
    return state


@register_perceiver("timm-image")
class TimmImagePerceiver(ImagePreprocessing, Perceiver):
    """A timm vision transformer (anything with ``blocks`` and ``forward_intermediates``)."""

    modality = "image"

    def __init__(
        self,
        model: str,
        *,
        pretrained: bool = False,
        checkpoint: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        summary: str = "auto",
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        self.options = {
            "model": model,
            "pretrained": pretrained,
            "checkpoint": checkpoint,
            "model_kwargs": model_kwargs,
            "seed": seed,
            "final_norm": final_norm,
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.backbone = timm.create_model(
                model, pretrained=pretrained, num_classes=0, **(model_kwargs or {})
            )
        if checkpoint is not None:
            # strict=False: the checkpoint may hold a classifier head, dropped here (num_classes=0)
            missing = self.backbone.load_state_dict(load_state_dict(checkpoint), strict=False)[0]
            if missing:
                raise ValueError(f"{checkpoint} lacks weights for {missing[:5]} ...")
        self.final_norm = final_norm
        self.hidden_size = self.backbone.embed_dim
        self.num_levels = len(self.backbone.blocks)
        self.summary = resolve_summary(summary, self.backbone)
        data = timm.data.resolve_model_data_config(self.backbone)
        self.image_mean, self.image_std = data["mean"], data["std"]
        # The data config reports the pretrained size even when model_kwargs changed img_size.
        patch_embed = getattr(self.backbone, "patch_embed", None)
        size = getattr(patch_embed, "img_size", None) or data["input_size"][1:]
        self.image_size = int(size[-1])

    def hidden_states(self, pixel_values: torch.Tensor) -> Sequence[torch.Tensor]:
        levels = self.backbone.forward_intermediates(
            pixel_values,
            norm=self.final_norm,
            output_fmt="NLC",
            intermediates_only=True,
            return_prefix_tokens=True,
        )
        # timm splits off the prefix (class, register) tokens; put them back in front, as in HF.
        return [
            torch.cat(level[::-1], dim=1) if isinstance(level, tuple) else level for level in levels
        ]

    def config(self) -> dict[str, Any]:
        return {**self.options, "summary": self.summary}
