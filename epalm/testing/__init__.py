"""Tiny randomly initialised models for tests: built from configs, no download, seconds to run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from epalm.config import ConnectorConfig, EPALMConfig, InjectionConfig, LMConfig, PerceiverConfig
from epalm.model import EPALM
from epalm.testing.perceivers import tiny_perceiver_kwargs

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
TINY_WIDTH, TINY_LAYERS = 64, 4

# Each tiny LM keeps its family's quirks: OPT's word_embed_proj and dropout, GPT-2's learned
# positions and fused attention, Llama's grouped-query attention and rotary positions.
_TINY_LMS: dict[str, dict[str, Any]] = {
    "opt": {
        "ffn_dim": 128,
        "word_embed_proj_dim": TINY_WIDTH,
        "dropout": 0.1,
        "max_position_embeddings": 256,
    },
    "gpt2": {"n_embd": TINY_WIDTH, "n_layer": TINY_LAYERS, "n_head": 4, "n_positions": 256},
    "llama": {"intermediate_size": 128, "num_key_value_heads": 2, "max_position_embeddings": 256},
    "mistral": {"intermediate_size": 128, "num_key_value_heads": 2, "max_position_embeddings": 256},
    "qwen2": {"intermediate_size": 128, "num_key_value_heads": 2, "max_position_embeddings": 256},
    "gemma3_text": {
        "intermediate_size": 128,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "sliding_window": 8,
        "max_position_embeddings": 256,
    },
}
TINY_LM_KINDS = tuple(_TINY_LMS)


def tiny_tokenizer(bos: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + 4 specials) that prepends ``<s>``, or adds
    nothing with ``bos=False`` (as SmolLM2's, GPT-2's and Qwen's tokenizers do)."""
    byte_tokens = list(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + sorted(byte_tokens))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def tiny_lm_config(kind: str, vocab_size: int) -> dict[str, Any]:
    """An HF config dict (with ``model_type``) for a tiny decoder LM of family ``kind``."""
    if kind not in _TINY_LMS:
        raise KeyError(f"unknown tiny LM {kind!r}; choose from {', '.join(TINY_LM_KINDS)}")
    common = {
        "vocab_size": vocab_size,
        "hidden_size": TINY_WIDTH,
        "num_hidden_layers": TINY_LAYERS,
        "num_attention_heads": 4,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if kind == "gpt2":
        common = {
            k: v
            for k, v in common.items()
            if k not in ("hidden_size", "num_hidden_layers", "num_attention_heads")
        }
    return {"model_type": kind, **common, **_TINY_LMS[kind]}


def tiny_config(
    lm: str = "llama", modalities: Sequence[str] = ("image",), **connector: Any
) -> EPALMConfig:
    """The config of a tiny EPALM: a 4-layer LM, 4-layer encoders, 2 levels into layers 1..3."""
    perceivers = {}
    for modality in modalities:
        name, kwargs = tiny_perceiver_kwargs(modality)
        perceivers[modality] = PerceiverConfig(name, kwargs)
    return EPALMConfig(
        lm=LMConfig(model_config=tiny_lm_config(lm, len(SPECIAL_TOKENS) + 256)),
        perceivers=perceivers,
        connector=ConnectorConfig(**{"levels": 2, "prompt_tokens": 3, **connector}),
        injection=InjectionConfig(first_layer=1, last_layer=TINY_LAYERS - 1),
    )


def tiny_model(
    lm: str = "llama", modalities: Sequence[str] = ("image",), bos: bool = True, **connector: Any
) -> EPALM:
    """A tiny randomly initialised EPALM, tokenizer included (``bos``: whether it prepends
    ``<s>``); ``connector`` overrides its settings."""
    return EPALM(tiny_config(lm, modalities, **connector), tokenizer=tiny_tokenizer(bos))


#: A tiny BERT for the text tower of a dual encoder (byte-level tokenizer: 260 tokens).
TINY_TEXT_ENCODER = {
    "model_type": "bert",
    "vocab_size": len(SPECIAL_TOKENS) + 256,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    "pad_token_id": 0,
}


def tiny_dual_encoder(modality: str = "image", align: str = "heads", **config: Any) -> Any:
    """A tiny randomly initialised dual encoder (retrieval): a tiny perceiver and a tiny BERT."""
    from epalm.retrieval.dual_encoder import DualEncoder, DualEncoderConfig

    name, kwargs = tiny_perceiver_kwargs(modality)
    text = {"model_config": TINY_TEXT_ENCODER, "tokenizer": "epalm-bytes"}
    return DualEncoder(
        DualEncoderConfig(
            PerceiverConfig(name, kwargs), text=text, embed_dim=16, align=align, **config
        )
    )
