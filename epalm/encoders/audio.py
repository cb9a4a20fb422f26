"""Audio perceivers: the Audio Spectrogram Transformer ("ast") and Whisper's encoder ("whisper")."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import ASTFeatureExtractor, WhisperFeatureExtractor, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from epalm.data.media import SAMPLING_RATE, load_audio
from epalm.encoders.backbone import HFPerceiver
from epalm.encoders.registry import register_perceiver


# --- SpecAugment -------------------------------------------------------------------------------
def mask_band(features: torch.Tensor, axis: int, max_width: int) -> torch.Tensor:
    """Zero one band of random width in ``[0, max_width]`` at a random place along ``axis``
    (torchaudio's Frequency/TimeMasking, as AST trains with)."""
    size = features.shape[axis]
    width = int(torch.randint(0, min(max_width, size) + 1, ()))
    start = int(torch.randint(0, size - width + 1, ()))
    features = features.clone()
    features.narrow(axis, start, width).zero_()
    return features


def spec_augment(
    features: torch.Tensor, freq_mask: int, time_mask: int, *, freq_axis: int, time_axis: int
) -> torch.Tensor:
    """One frequency and one time mask. Both perceivers' features are normalised, so 0 is a
    neutral value (AST: the AudioSet mean; Whisper: what HF Whisper's own masking writes)."""
    return mask_band(mask_band(features, freq_axis, freq_mask), time_axis, time_mask)


# --- Audio Spectrogram Transformer -------------------------------------------------------------
@register_perceiver("ast")
class ASTPerceiver(HFPerceiver):
    """HF AST on kaldi fbank features (AudioSet normalisation), summarised by its [CLS]."""

    modality = "audio"
    sampling_rate = SAMPLING_RATE

    def __init__(
        self,
        *args: Any,
        spec_augment: bool = True,
        freq_mask: int = 48,
        time_mask: int = 192,
        **kwargs: Any,
    ) -> None:
        """HFPerceiver's arguments, and SpecAugment in training: AST's AudioSet setting (at most
        48 of 128 mel bins and 192 of 1024 frames masked) by default."""
        super().__init__(*args, **kwargs)
        self.spec_augment, self.freq_mask, self.time_mask = spec_augment, freq_mask, time_mask
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
        features = features["input_values"][0]  # [frames, mel bins]
        if train and self.spec_augment:
            features = spec_augment(
                features, self.freq_mask, self.time_mask, freq_axis=1, time_axis=0
            )
        return {"input_values": features}

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "spec_augment": self.spec_augment,
            "freq_mask": self.freq_mask,
            "time_mask": self.time_mask,
        }


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


# One lock per encoder: real_length changes the shared module while it runs.
_REAL_LENGTH_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = (
    weakref.WeakKeyDictionary()
)
_LOCKS_LOCK = threading.Lock()


@contextmanager
def real_length(encoder: WhisperEncoder, frames: int) -> Iterator[WhisperEncoder]:
    """Let HF's Whisper encoder take ``frames`` mel frames instead of a fixed 30 s (3000).

    Its forward checks the length against ``config.max_source_positions`` and adds every row of
    ``embed_positions``; for the duration, both are cut to the clip's positions. Calls on one
    encoder from several threads (the demo serves one model from many) take turns.
    """
    positions = frames // (encoder.conv1.stride[0] * encoder.conv2.stride[0])
    with _LOCKS_LOCK:
        lock = _REAL_LENGTH_LOCKS.setdefault(encoder, threading.Lock())
    with lock:
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

    def __init__(
        self,
        *args: Any,
        max_seconds: float = 30.0,
        spec_augment: bool = True,
        freq_mask: int = 30,
        time_mask: int = 192,
        **kwargs: Any,
    ) -> None:
        """HFPerceiver's arguments, and SpecAugment in training, scaled from AST's AudioSet
        setting: 30 of 80 mel bins (AST's 48 of 128) and 192 frames (1.92 s: both use 10 ms
        frames; never more than the clip)."""
        super().__init__(*args, **kwargs)
        self.spec_augment, self.freq_mask, self.time_mask = spec_augment, freq_mask, time_mask
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
        features = features["input_features"][0]  # [mel bins, frames]
        if train and self.spec_augment:
            features = spec_augment(
                features, self.freq_mask, self.time_mask, freq_axis=0, time_axis=1
            )
        return {"input_features": features}

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

    def token_mask(self, inputs: dict[str, torch.Tensor], length: int) -> torch.Tensor:
        mask = inputs.get("attention_mask")  # one encoder position per two mel frames
        return super().token_mask(inputs, length) if mask is None else mask[:, ::2]

    def forward(
        self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        levels = self.hidden_states(input_features)
        # the real positions only: one encoder position per two mel frames
        real = None if attention_mask is None else attention_mask[:, ::2]
        return torch.stack([self.summarize(h, real) for h in levels], dim=1)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "max_seconds": self.max_seconds,
            "spec_augment": self.spec_augment,
            "freq_mask": self.freq_mask,
            "time_mask": self.time_mask,
        }
