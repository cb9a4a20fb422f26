"""Audio perceivers: the Audio Spectrogram Transformer ("ast") and Whisper's encoder ("whisper")."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import ASTFeatureExtractor, WhisperFeatureExtractor, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from epalm.encoders.backbone import HFPerceiver
from epalm.encoders.registry import register_perceiver

SAMPLING_RATE = 16_000


# --- waveforms ---------------------------------------------------------------------------------
def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    from scipy.signal import resample_poly  # only off-rate audio needs scipy

    g = math.gcd(int(rate), int(target))
    return resample_poly(wave, int(target) // g, int(rate) // g).astype(np.float32)


def load_audio(media: Any, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """A path, ``{"array", "sampling_rate"}`` dict (HF datasets) or an array already at
    ``sampling_rate`` -> mono float32 waveform at ``sampling_rate``."""
    rate = sampling_rate
    if isinstance(media, (str, os.PathLike)):
        import soundfile  # only audio files need it

        media, rate = soundfile.read(media, dtype="float32", always_2d=True)
    elif isinstance(media, dict):
        media, rate = media["array"], media["sampling_rate"]
    wave = np.asarray(media, dtype=np.float32)
    if wave.ndim == 2:  # channels are the short axis: [samples, channels] or [channels, samples]
        wave = wave.mean(axis=int(np.argmin(wave.shape)))
    if wave.ndim != 1:
        raise ValueError(f"expected mono or multichannel audio, got shape {wave.shape}")
    return wave if rate == sampling_rate else resample(wave, rate, sampling_rate)


# --- Audio Spectrogram Transformer -------------------------------------------------------------
@register_perceiver("ast")
class ASTPerceiver(HFPerceiver):
    """HF AST on kaldi fbank features (AudioSet normalisation), summarised by its [CLS]."""

    modality = "audio"
    sampling_rate = SAMPLING_RATE

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # HFPerceiver's arguments
        super().__init__(*args, **kwargs)
        config = self.backbone.config
        self.extractor = ASTFeatureExtractor(
            num_mel_bins=config.num_mel_bins,
            max_length=config.max_length,
            mean=-4.2677393,
            std=4.5689974,
        )

    def preprocess(self, media: Any, *, train: bool = False) -> dict[str, torch.Tensor]:
        wave = load_audio(media, self.sampling_rate)
        features = self.extractor(wave, sampling_rate=self.sampling_rate, return_tensors="pt")
        return {"input_values": features["input_values"][0]}


# --- Whisper encoder -----------------------------------------------------------------------------
class WhisperEncoderOnly:
    """``load_model`` loader: Whisper's encoder, from a config or a full Whisper checkpoint."""

    @staticmethod
    def from_config(config: Any, **kwargs: Any) -> WhisperEncoder:
        return WhisperEncoder(config)

    @staticmethod
    def from_pretrained(path: str, **kwargs: Any) -> WhisperEncoder:
        # WhisperEncoder.from_pretrained silently misses the "model.encoder." weight prefix
        return WhisperModel.from_pretrained(path, **kwargs).get_encoder()


@contextmanager
def real_length(encoder: WhisperEncoder, frames: int) -> Iterator[WhisperEncoder]:
    """Let HF's Whisper encoder take ``frames`` mel frames instead of a fixed 30 s (3000).

    Its forward checks the length against ``config.max_source_positions`` and adds every row of
    ``embed_positions``; for the duration, both are cut to the clip's positions. Not thread-safe.
    """
    positions = frames // (encoder.conv1.stride[0] * encoder.conv2.stride[0])
    config, table = encoder.config, encoder.embed_positions
    full = config.max_source_positions
    if positions > full:
        raise ValueError(f"{frames} mel frames exceed Whisper's {full} positions")
    config.max_source_positions = positions
    encoder.embed_positions = nn.Embedding.from_pretrained(table.weight[:positions])
    try:
        yield encoder
    finally:
        config.max_source_positions = full
        encoder.embed_positions = table


@register_perceiver("whisper")
class WhisperPerceiver(HFPerceiver):
    """Whisper's encoder on log-mel features of the clip's real length (no 30 s padding),
    summarised by the mean over time."""

    modality = "audio"
    sampling_rate = SAMPLING_RATE
    loader = WhisperEncoderOnly

    def __init__(self, *args: Any, max_seconds: float = 30.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extractor = WhisperFeatureExtractor(feature_size=self.backbone.config.num_mel_bins)
        longest = self.backbone.config.max_source_positions * 2 * self.extractor.hop_length
        if max_seconds * self.sampling_rate > longest:
            raise ValueError(f"max_seconds={max_seconds} exceeds the encoder's {longest} samples")
        self.max_seconds = max_seconds

    def preprocess(self, media: Any, *, train: bool = False) -> dict[str, torch.Tensor]:
        wave = load_audio(media, self.sampling_rate)[: int(self.max_seconds * self.sampling_rate)]
        # whole pairs of mel frames (the encoder's second conv halves time): pad to 2 hops
        step = 2 * self.extractor.hop_length
        wave = np.pad(wave, (0, max(step, -(-len(wave) // step) * step) - len(wave)))
        features = self.extractor(
            wave, sampling_rate=self.sampling_rate, padding="longest", return_tensors="pt"
        )
        return {"input_features": features["input_features"][0]}

    def collate(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pad to the longest clip with the log-mel of silence, and mark the real frames.

        Silence is what the extractor gives zero-padded audio: its floor, ``max - 8`` in log10
        units, i.e. ``max(features.max() - 2, -1.5)`` after Whisper's ``(x + 4) / 4`` scaling.
        (Only the clip's last frame differs from padding the waveform: it sees reflected audio.)
        """
        features = [s["input_features"] for s in samples]
        length = max(f.shape[-1] for f in features)
        padded, mask = [], torch.zeros(len(features), length, dtype=torch.long)
        for row, f in enumerate(features):
            silence = max(f.max().item() - 2.0, -1.5)
            padded.append(nn.functional.pad(f, (0, length - f.shape[-1]), value=silence))
            mask[row, : f.shape[-1]] = 1
        return {"input_features": torch.stack(padded), "attention_mask": mask}

    def hidden_states(
        self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> Sequence[torch.Tensor]:
        # the mask is not given to the encoder: Whisper attends to its padding, as in training
        with real_length(self.backbone, input_features.shape[-1]):
            return super().hidden_states(input_features=input_features)

    def forward(
        self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        levels = self.hidden_states(input_features)
        if self.summary == "mean" and attention_mask is not None:
            # average the real positions only: one encoder position per two mel frames
            keep = attention_mask[:, ::2, None].to(levels[0].dtype)
            return torch.stack([(h * keep).sum(1) / keep.sum(1) for h in levels], dim=1)
        return torch.stack([self.summarize(h) for h in levels], dim=1)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "max_seconds": self.max_seconds}
