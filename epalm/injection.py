"""Putting perceptual tokens into any HF decoder-only LM, through hooks (no forked modelling code).

Sequence layout seen by the LM: ``[slots][soft prompt][text]``. A slot is one reserved position
per modality. Its input embedding is a zero placeholder; at each injection layer a forward
pre-hook overwrites it with that layer's perceptual token, so the token is in place from the
first injection layer on and replaced at each later one (eP-ALM's schedule). Slots come first
and the LM's own causal mask applies to them, so a slot only ever attends to itself and
earlier slots: a logit at text position t never depends on text after t. (eP-ALM's own code
lets the injected token see the whole text, which leaks one layer of look-ahead.)

Where eP-ALM inserts the token only at the first injection layer, here the slot exists from the
input on, holding the placeholder. Text attends to that constant in the layers before injection;
it carries no information, and keeping the sequence length fixed lets HF's masks, rotary
positions and KV cache work unchanged.

The placeholder's hidden state stays exactly zero until the first injection layer; gradients
into it are cut there (they would cross RMSNorm at zero input and overflow on deep LMs), which
changes no gradient of a trained parameter.

With a KV cache, only the first forward call of a generation (nothing cached yet) contains the
prefix; later calls see only new tokens, whose keys already hold the injected slots.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

# model_type -> dotted path (from the *ForCausalLM module) to its nn.ModuleList of decoder layers.
_DECODER_LAYERS: dict[str, str] = {
    "opt": "model.decoder.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "llama": "model.layers",
    "mistral": "model.layers",
    "mixtral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "phi3": "model.layers",
    "smollm3": "model.layers",
}


def register_decoder_layers(model_type: str, path: str) -> None:
    """Teach epalm where an LM architecture keeps its decoder layers, e.g. ``"model.layers"``."""
    _DECODER_LAYERS[model_type] = path


def known_architectures() -> list[str]:
    return sorted(_DECODER_LAYERS)


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The decoder layers of an HF causal LM, looked up by its ``config.model_type``."""
    model_type = getattr(getattr(lm, "config", None), "model_type", None)
    path = _DECODER_LAYERS.get(model_type)
    if path is None:
        raise ValueError(
            f"epalm does not know where {type(lm).__name__} (model_type {model_type!r}) keeps its "
            f"decoder layers. Known: {', '.join(known_architectures())}. Add it with "
            f"epalm.injection.register_decoder_layers({model_type!r}, 'model.layers'), giving the "
            "dotted path from the causal LM to its nn.ModuleList of decoder layers."
        )
    try:
        layers = operator.attrgetter(path)(lm)
    except AttributeError:
        raise ValueError(
            f"{type(lm).__name__} has no attribute {path!r} (decoder layers of {model_type!r})"
        ) from None
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(lm).__name__}.{path} is a {type(layers).__name__}, not an nn.ModuleList"
        )
    return layers


def injection_schedule(
    num_layers: int, levels: int, first_layer: int | None = None, last_layer: int | None = None
) -> dict[int, int]:
    """LM layer -> encoder level (0 = shallowest kept level), spread evenly over the layer range.

    Default range is eP-ALM's (layers 19..30 of OPT-2.7B's 32) scaled to the LM's depth: each of
    6 levels then feeds two consecutive layers, shallower levels to earlier layers.
    """
    first = num_layers * 19 // 32 if first_layer is None else first_layer
    last = num_layers - 2 if last_layer is None else last_layer
    if not 0 <= first <= last < num_layers:
        raise ValueError(
            f"injection layers {first}..{last} are out of range for an LM with {num_layers} layers "
            f"(valid: 0 <= first_layer <= last_layer <= {num_layers - 1})"
        )
    span = last - first + 1
    if levels > span:
        raise ValueError(
            f"{levels} encoder levels cannot be spread over {span} injection layers ({first}..{last}); "
            "widen injection.first_layer/last_layer or lower connector.levels"
        )
    return {first + i: i * levels // span for i in range(span)}


@dataclass
class _Active:
    slot_tokens: Sequence[torch.Tensor | None]  # per slot: [batch, levels, hidden] or None (absent)
    prompt: torch.Tensor | None  # [prompt_tokens, embed_dim]
    at_start: bool = True  # whether the current LM call holds the prefix (nothing cached before it)


class Injector:
    """Hooks a frozen causal LM so that, inside ``inject(...)``, its prefix carries perception.

    What is being injected is kept per thread, so one model (or several sharing one LM) can
    serve requests from several threads at once.
    """

    def __init__(self, lm: nn.Module, schedule: dict[int, int], num_slots: int, prompt_tokens: int):
        self.schedule = dict(schedule)
        self.num_slots = num_slots
        self.prompt_tokens = prompt_tokens
        self._local = threading.local()
        layers = decoder_layers(lm)
        first = min(self.schedule, default=len(layers))
        self._handles = [
            lm.register_forward_pre_hook(self._see_cache, with_kwargs=True),
            lm.get_input_embeddings().register_forward_hook(self._embed_prefix),
            *(
                layers[index].register_forward_pre_hook(
                    self._make_layer_hook(level), with_kwargs=True
                )
                for index, level in self.schedule.items()
            ),
            *(
                layers[index].register_forward_pre_hook(self._detach_slots, with_kwargs=True)
                for index in range(1, first)
            ),
        ]

    @property
    def _active(self) -> _Active | None:
        return getattr(self._local, "active", None)

    @_active.setter
    def _active(self, active: _Active | None) -> None:
        self._local.active = active

    @property
    def prefix_length(self) -> int:
        return self.num_slots + self.prompt_tokens

    @contextmanager
    def inject(
        self, slot_tokens: Sequence[torch.Tensor | None], prompt: torch.Tensor | None
    ) -> Iterator[None]:
        """Within this block, LM calls get these perceptual tokens and this soft prompt."""
        if len(slot_tokens) != self.num_slots:
            raise ValueError(f"expected tokens for {self.num_slots} slots, got {len(slot_tokens)}")
        self._active = _Active(slot_tokens, prompt)
        try:
            yield
        finally:
            self._active = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    # --- hooks ------------------------------------------------------------------------------
    def _see_cache(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if self._active is None:
            return
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None else 0
        if 0 < past < self.prefix_length:
            raise RuntimeError(
                f"cache holds {past} positions, fewer than the {self.prefix_length}-token prefix"
            )
        self._active.at_start = past == 0

    def _embed_prefix(
        self, module: nn.Module, args: tuple, embeds: torch.Tensor
    ) -> torch.Tensor | None:
        active = self._active
        if active is None or not active.at_start:
            return None
        batch = embeds.shape[0]
        placeholder = embeds.new_zeros(batch, self.num_slots, embeds.shape[-1])
        parts = [placeholder]
        if active.prompt is not None:
            parts.append(active.prompt.to(embeds.dtype).expand(batch, -1, -1))
        parts.append(embeds[:, self.prefix_length :])
        return torch.cat(parts, dim=1)

    def _make_layer_hook(self, level: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            active = self._active
            if active is None or not active.at_start:
                return None
            place = partial(self._place_tokens, slot_tokens=active.slot_tokens, level=level)
            return _with_hidden(args, kwargs, place)

        return hook

    def _detach_slots(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        """Cut gradients into the slots before their first injection layer.

        There a slot holds the zero placeholder, whose hidden state stays exactly zero through
        every layer; gradients flowing back into it cross RMSNorm at zero input, which scales
        them by 1/sqrt(eps), and overflow to NaN over enough layers (seen on SmolLM2-135M, first
        injection layer 17). Nothing trainable lies behind the placeholder, so no gradient that
        matters changes.
        """
        active = self._active
        hidden = args[0] if args else kwargs["hidden_states"]
        if active is None or not active.at_start or not hidden.requires_grad:
            return None  # no gradient will flow here: spare the copy
        slots = self.num_slots
        return _with_hidden(
            args, kwargs, lambda h: torch.cat([h[:, :slots].detach(), h[:, slots:]], 1)
        )

    def _place_tokens(
        self, hidden: torch.Tensor, slot_tokens: Sequence[torch.Tensor | None], level: int
    ) -> torch.Tensor:
        slots = [
            hidden[:, i : i + 1]
            if tokens is None
            else _match_batch(tokens[:, level : level + 1], hidden)
            for i, tokens in enumerate(slot_tokens)
        ]
        return torch.cat([*slots, hidden[:, self.num_slots :]], dim=1)


def _with_hidden(args: tuple, kwargs: dict[str, Any], change) -> tuple[tuple, dict[str, Any]]:
    """A decoder layer pre-hook's result: its hidden states (first argument) changed."""
    if args:
        return (change(args[0]), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": change(kwargs["hidden_states"])}


def _match_batch(tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Cast to the LM's dtype and repeat for beam search, which expands each sample in place."""
    repeats, rest = divmod(hidden.shape[0], tokens.shape[0])
    if rest:
        raise RuntimeError(
            f"LM batch {hidden.shape[0]} is not a multiple of the perception batch {tokens.shape[0]}"
        )
    return tokens.to(hidden.dtype).repeat_interleave(repeats, dim=0)
