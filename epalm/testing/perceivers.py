"""Tiny random perceivers and sample media for tests: built from configs, nothing downloaded."""

from __future__ import annotations

from typing import Any

import numpy as np

TINY_VIT = {
    "model_type": "vit",
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}
TINY_WHISPER = {
    "model_type": "whisper",
    "d_model": 32,
    "encoder_layers": 4,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_layers": 1,
    "decoder_attention_heads": 2,
    "decoder_ffn_dim": 64,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
}


def tiny_perceiver_kwargs(modality: str) -> tuple[str, dict[str, Any]]:
    """``(registry name, kwargs)`` of a tiny random perceiver for ``modality``."""
    if modality == "image":
        return "image", {"model_config": dict(TINY_VIT)}
    if modality == "video":
        return "frames", {
            "image": {"name": "image", "model_config": dict(TINY_VIT)},
            "num_frames": 4,
        }
    if modality == "audio":
        return "whisper", {"model_config": dict(TINY_WHISPER)}
    raise KeyError(f"no tiny perceiver for {modality!r}; choose image, video or audio")


def sample_media(modality: str, seed: int = 0) -> Any:
    """One deterministic raw example: an image ``[48, 40, 3]``, a video ``[6, 40, 48, 3]`` (uint8,
    frames differ) or 1 s of 16 kHz float32 audio (a tone whose pitch depends on ``seed``)."""
    rng = np.random.default_rng(seed)
    if modality == "image":
        return rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)
    if modality == "video":
        return rng.integers(0, 256, size=(6, 40, 48, 3), dtype=np.uint8)
    if modality == "audio":
        t = np.arange(16_000) / 16_000
        return (0.5 * np.sin(2 * np.pi * (220 + 110 * seed) * t)).astype(np.float32)
    raise KeyError(f"no sample media for {modality!r}; choose image, video or audio")
