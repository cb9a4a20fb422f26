"""A tower's transformer blocks: where an HF model keeps them, which of them a run changes, and
running the top of a tower from the hidden state that enters one of them.

Where only the top blocks of a perceiver train (``align=last-layers``), the frozen bottom gives
every file the same hidden state at the first trained block; the feature cache stores it once
(``FeatureCache(perceiver, below=k)``) and training runs only blocks ``k..`` from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def backbone_of(tower: nn.Module) -> nn.Module:
    """The HF model inside a tower: a perceiver's ``backbone`` (a frame-wise video perceiver's
    image perceiver's), or the text encoder's model."""
    for candidate in (tower, getattr(tower, "image", None)):
        for name in ("backbone", "model"):
            module = getattr(candidate, name, None) if candidate is not None else None
            if isinstance(module, nn.Module) and hasattr(module, "config"):
                return module
    raise TypeError(f"{type(tower).__name__}: no HF model found (no .backbone or .model)")


def encoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of a model's transformer blocks: the one whose length is the config's
    number of layers. Anything else (none, or two) is an error that names what was found."""
    config = model.config
    depth = getattr(config, "num_hidden_layers", None) or getattr(config, "encoder_layers", None)
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) == depth
        and len({type(block) for block in module}) == 1
    ]
    if len(found) != 1:
        raise ValueError(
            f"{type(model).__name__}: expected one list of {depth} blocks, found "
            f"{[name for name, _ in found] or 'none'}; this architecture is not supported yet"
        )
    return found[0][1]


def changes_output(hook: Callable) -> Callable:
    """Mark a forward hook as one that changes its module's output (an adapter), so that
    ``changed_parts`` counts it. Other hooks only look (HF installs its own on every block to
    collect hidden states)."""
    hook.changes_output = True  # type: ignore[attr-defined]
    return hook


def changed_parts(module: nn.Module) -> list[str]:
    """What makes a frozen module compute other than its frozen self: trainable parameters,
    and submodules with forward hooks that change their output (adapters)."""
    return [name or "(the whole)" for name, _ in _changed(module)]


def first_changed_block(perceiver: nn.Module, final_norm: nn.Module) -> int | None:
    """The lowest block a run changes (trains or hooks), where everything it changes lies in
    that block, the blocks above it and ``final_norm`` (the norm after them): the frozen blocks
    below it give every file one hidden state. ``None`` where nothing changes; 0 where something
    below the blocks does (nothing of the tower is fixed then)."""
    changed = {id(x) for _, x in _changed(perceiver)}
    if not changed:
        return None
    blocks = encoder_blocks(backbone_of(perceiver))
    inside = _ids(final_norm)
    for start in reversed(range(len(blocks) + 1)):
        if start < len(blocks):
            inside |= _ids(blocks[start])
        if changed <= inside:  # only the final norm changing still runs the last block
            return min(start, len(blocks) - 1)
    return 0


def _changed(module: nn.Module) -> list[tuple[str, Any]]:
    trained = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    hooked = [
        (name, m)
        for name, m in module.named_modules()
        if any(getattr(h, "changes_output", False) for h in m._forward_hooks.values())
    ]
    return trained + hooked


def _ids(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()} | {id(m) for m in module.modules()}


def block_input(blocks: nn.ModuleList, start: int, run: Any) -> torch.Tensor:
    """The hidden state that enters ``blocks[start]`` while ``run()`` runs the model: exactly
    what the model's own forward hands that block. (The forward runs to its end: stopping it
    with an exception would leave HF's own output-capturing hooks on the blocks.)"""
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(hidden, torch.Tensor):
            raise TypeError(
                f"{type(module).__name__} was called without its hidden states as the first "
                "argument or `hidden_states`; this architecture cannot be cached below a block"
            )
        captured.append(hidden)

    handle = blocks[start].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"block {start} ran {len(captured)} times in one forward, not once")
    return captured[0]


def run_blocks(blocks: nn.ModuleList, hidden: torch.Tensor, start: int) -> torch.Tensor:
    """``blocks[start:]`` applied to the hidden state that enters ``blocks[start]``, as the
    encoders of ViT, DINOv2 and Whisper call them (no attention mask: they attend to every
    position)."""
    for block in blocks[start:]:
        out = block(hidden, **_no_mask(block))
        hidden = out[0] if isinstance(out, tuple) else out
        if not isinstance(hidden, torch.Tensor):
            raise TypeError(f"{type(block).__name__} returned {type(out).__name__}, not a tensor")
    return hidden


def _no_mask(block: nn.Module) -> dict[str, Any]:
    """``attention_mask=None`` where the block's forward takes one (Whisper's requires it);
    any other required argument is an error that names it."""
    params = inspect.signature(block.forward).parameters
    required = [
        name
        for name, p in list(params.items())[1:]
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and name != "attention_mask"
    ]
    if required:
        raise TypeError(
            f"{type(block).__name__}.forward requires {required}: it cannot be run from a "
            "cached hidden state"
        )
    return {"attention_mask": None} if "attention_mask" in params else {}
