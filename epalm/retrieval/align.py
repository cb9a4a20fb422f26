"""LilT's variants: which parameters of a dual encoder train (``align=NAME``), a registry.

The projection heads and the temperature always train. Each variant then unlocks (or adds) a
part of both towers, after LilT's ``models/clip_adjustable.py``:

- ``heads``: nothing more, the floor;
- ``lit``: the whole text tower (LiT: the image tower stays locked);
- ``layernorm``: both towers' norms;
- ``bitfit``: both towers' biases;
- ``adapters``: bottleneck adapters after every block's attention and feed-forward, in both
  towers, and their norms (LilT's recipe);
- ``last-layers``: the last block(s) of each tower and the norm after them;
- ``full``: everything (the CLIP-style reference).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from epalm.adapters.bottleneck import Bottleneck, bottleneck_width
from epalm.adapters.trainability import bias_parameters, norm_parameters
from epalm.encoders.blocks import backbone_of, changes_output, encoder_blocks
from epalm.retrieval.towers import block_sites

AlignVariant = Callable[..., None]  # (dual encoder, **kwargs) -> None
_VARIANTS: dict[str, AlignVariant] = {}


def register_align(name: str) -> Callable[[AlignVariant], AlignVariant]:
    def register(variant: AlignVariant) -> AlignVariant:
        _VARIANTS[name] = variant
        return variant

    return register


def align_variants() -> list[str]:
    return list(_VARIANTS)


def apply_align(name: str, model: nn.Module, **kwargs: Any) -> None:
    """Freeze both towers, then let variant ``name`` unlock or add what it trains."""
    if name not in _VARIANTS:
        raise ValueError(f"align={name!r}: choose one of {', '.join(_VARIANTS)}")
    for tower in towers(model).values():
        tower.requires_grad_(False)
    _VARIANTS[name](model, **kwargs)


def towers(model: nn.Module) -> dict[str, nn.Module]:
    """The HF model of each tower, by side."""
    return {"media": backbone_of(model.perceiver), "text": model.text.model}


def _unlock(tower: nn.Module, names: list[str]) -> None:
    for name in names:
        tower.get_parameter(name).requires_grad_(True)


@register_align("heads")
def heads(model: nn.Module) -> None:
    """Only the heads and the temperature."""


@register_align("lit")
def lit(model: nn.Module) -> None:
    towers(model)["text"].requires_grad_(True)


@register_align("layernorm")
def layernorm(model: nn.Module) -> None:
    for tower in towers(model).values():
        _unlock(tower, _required(norm_parameters(tower), tower, "norm"))


@register_align("bitfit")
def bitfit(model: nn.Module) -> None:
    for tower in towers(model).values():
        _unlock(tower, _required(bias_parameters(tower, skip=set()), tower, "bias"))


@register_align("adapters")
def adapters(model: nn.Module, reduction_factor: int = 8, activation: str = "gelu") -> None:
    """A bottleneck after each block's attention and feed-forward outputs (before the residual;
    it starts at zero, so the towers start out unchanged), plus the towers' norms."""
    for side, tower in towers(model).items():
        width = bottleneck_width(tower.config.hidden_size, reduction_factor)
        for index, block in enumerate(encoder_blocks(tower)):
            for role, path in block_sites(block).items():
                adapter = Bottleneck(tower.config.hidden_size, width, activation)
                model.adapters[f"{side}-{index}-{role}"] = adapter
                block.get_submodule(path).register_forward_hook(_adding(adapter))
        _unlock(tower, norm_parameters(tower))


@register_align("last-layers")
def last_layers(model: nn.Module, layers: int = 1) -> None:
    """The last ``layers`` blocks of each tower and any norm after its blocks."""
    for tower in towers(model).values():
        blocks = encoder_blocks(tower)
        if not 1 <= layers <= len(blocks):
            raise ValueError(f"align last-layers: layers={layers} of {len(blocks)} blocks")
        for block in blocks[-layers:]:
            block.requires_grad_(True)
        _unlock(tower, after_blocks(tower))


@register_align("full")
def full(model: nn.Module) -> None:
    for tower in towers(model).values():
        tower.requires_grad_(True)


def after_blocks(tower: nn.Module) -> list[str]:
    """The norm parameters that act after the last block (DINOv2's final ``layernorm``,
    Whisper's ``layer_norm``): those outside the blocks and outside the embeddings."""
    blocks = encoder_blocks(tower)
    inside = {id(p) for p in blocks.parameters()}
    return [
        name
        for name in norm_parameters(tower)
        if id(tower.get_parameter(name)) not in inside and "embed" not in name
    ]


def _required(names: list[str], tower: nn.Module, kind: str) -> list[str]:
    if not names:
        raise ValueError(f"{type(tower).__name__} has no {kind} parameters to train")
    return names


def _adding(adapter: nn.Module) -> Callable:
    def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
        return output + adapter(output)

    return changes_output(hook)
