"""Where each decoder architecture keeps the parts that adapters attach to.

Paths are dotted, from one decoder layer (the layers themselves are found by
``epalm.injection.decoder_layers``):

- ``attention_output``: the module whose output is the attention's, before the residual
  (its output projection);
- ``feed_forward_output``: the module whose output is the feed-forward's, before the residual;
- ``query`` / ``value``: the projections LoRA adapts (one fused projection where the
  architecture fuses them: LoRA then adapts the keys too).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from torch import nn

from epalm.injection import decoder_layers, register_decoder_layers


@dataclass(frozen=True)
class LayerParts:
    attention_output: str
    feed_forward_output: str
    query: str
    value: str

    def roles(self) -> dict[str, str]:
        return {
            "attention": self.attention_output,
            "feed_forward": self.feed_forward_output,
            "query": self.query,
            "value": self.value,
        }


_LLAMA = LayerParts("self_attn.o_proj", "mlp", "self_attn.q_proj", "self_attn.v_proj")
_PARTS: dict[str, LayerParts] = {
    "opt": LayerParts("self_attn.out_proj", "fc2", "self_attn.q_proj", "self_attn.v_proj"),
    "gpt2": LayerParts("attn.c_proj", "mlp", "attn.c_attn", "attn.c_attn"),
    "gpt_neox": LayerParts(
        "attention.dense", "mlp", "attention.query_key_value", "attention.query_key_value"
    ),
    "phi3": LayerParts("self_attn.o_proj", "mlp", "self_attn.qkv_proj", "self_attn.qkv_proj"),
    **{
        model_type: _LLAMA
        for model_type in (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "smollm3",
        )
    },
}


def register_architecture(
    model_type: str,
    *,
    attention_output: str,
    feed_forward_output: str,
    query: str,
    value: str,
    layers: str | None = None,
) -> None:
    """Teach epalm's adapters a decoder architecture: where, inside one of its decoder layers,
    the attention's output, the feed-forward's output and the query and value projections are,
    e.g. ``register_architecture("mylm", attention_output="attn.out", feed_forward_output="ffn",
    query="attn.q", value="attn.v", layers="model.blocks")``. ``layers`` (the dotted path from
    the causal LM to its decoder layers) is only needed when ``epalm.injection`` does not know
    the architecture yet."""
    if layers is not None:
        register_decoder_layers(model_type, layers)
    _PARTS[model_type] = LayerParts(attention_output, feed_forward_output, query, value)


def known_architectures() -> list[str]:
    return sorted(_PARTS)


def layer_parts(lm: nn.Module) -> LayerParts:
    """The parts of ``lm``'s decoder layers, checked to exist in its first layer."""
    model_type = getattr(getattr(lm, "config", None), "model_type", None)
    parts = _PARTS.get(model_type)
    if parts is None:
        raise ValueError(
            f"epalm's adapters do not know where {type(lm).__name__} (model_type "
            f"{model_type!r}) keeps its attention and feed-forward. Known: "
            f"{', '.join(known_architectures())}. Add it with epalm.adapters."
            f"register_architecture({model_type!r}, attention_output=..., "
            "feed_forward_output=..., query=..., value=...)"
        )
    first = decoder_layers(lm)[0]
    for role, path in parts.roles().items():
        submodule(first, path, f"{model_type} decoder layer's {role}")
    return parts


def submodule(layer: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return operator.attrgetter(path)(layer)
    except AttributeError:
        raise ValueError(
            f"{what}: {type(layer).__name__} has no submodule {path!r} (a transformers release "
            "that renamed it? register_architecture gives the new path)"
        ) from None
