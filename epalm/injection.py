"""Putting perceptual tokens into any HF decoder-only LM, through hooks (no forked modelling code).

Sequence layout seen by the LM: ``[slots][soft prompt][text]``. A slot is a span of K reserved
positions per modality (K = 1 for eP-ALM's summaries; a connector may give more, with a mask per
sample for padded ones). Its input embeddings are a zero placeholder; at each injection layer a
forward pre-hook overwrites the span with that layer's K perceptual tokens, so they are in place
from the first injection layer on and replaced at each later one (eP-ALM's schedule). Slots come
first and the LM's own causal mask applies to them, so a slot only ever attends to itself and
earlier slots: a logit at text position t never depends on text after t. (eP-ALM's own code
lets the injected token see the whole text, which leaks one layer of look-ahead.) A slot's width
is read from its tokens at each ``inject`` (a connector that passes on every token has as many
as the batch's longest input); an absent slot keeps its nominal width, masked.

Where eP-ALM inserts the token only at the first injection layer, here the slot exists from the
input on, holding the placeholder. Text attends to that constant in the layers before injection;
it carries no information, and keeping the sequence length fixed lets HF's masks, rotary
positions and KV cache work unchanged.

In LMs without biases the placeholder's hidden state stays exactly zero until the first
injection layer; gradients into a zero slot are cut there (they would cross RMSNorm at zero
input and overflow on deep LMs), which changes no gradient of a trained parameter: LM adapters
leave the placeholder's rows alone (``placeholder_rows``).

With a KV cache, only the first forward call of a generation (nothing cached yet) contains the
prefix; later calls see only new tokens, whose keys already hold the injected slots. Which call
holds the prefix is read from what the call holds, not from HF's argument names (which change:
``past_key_values`` became ``cache`` in transformers 5.24): the cache is found by its type
among the call's arguments and measured with its own ``get_seq_length``; a call with no cache
must be at least as long as the first call of the block. Whatever breaks these invariants
raises, naming what it found, instead of injecting into the wrong positions.

Positions: by default the prefix takes positions 0.. and the text follows it, as HF counts
them. ``prefix_positions="none"`` is eP-ALM's layout: the LM pre-hook moves every call's
position ids back by the prefix's length (text from 0, the prefix at 0), and for LMs with a
learned position table a hook zeroes the prefix's rows of it, so the prefix gets no position.
"""

from __future__ import annotations

import inspect
import operator
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache

from epalm.config import PREFIX_POSITIONS

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


# model_type -> dotted path to its table of learned absolute positions, for the LMs that add
# one to the input embeddings. LMs not listed encode positions by rotation (RoPE), where
# position 0 is the identity: a prefix at position 0 carries no position.
_POSITION_EMBEDDINGS: dict[str, str] = {
    "opt": "model.decoder.embed_positions",
    "gpt2": "transformer.wpe",
}


def register_position_embeddings(model_type: str, path: str) -> None:
    """Teach epalm where an LM with learned absolute positions keeps their table (its output
    is added to the input embeddings), e.g. ``"transformer.wpe"``."""
    _POSITION_EMBEDDINGS[model_type] = path


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
class SlotTokens:
    """One slot's perception for a batch: ``tokens`` ``[batch, levels, K, hidden]`` (one set of
    K tokens per injected level) and ``mask`` ``[batch, K]`` (1: a real token, 0: padding that
    nothing attends to)."""

    tokens: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.tokens.ndim != 4 or self.mask.shape != (self.tokens.shape[0], self.tokens.shape[2]):
            raise ValueError(
                f"slot tokens must be [batch, levels, K, hidden] with a [batch, K] mask; got "
                f"{tuple(self.tokens.shape)} and {tuple(self.mask.shape)}"
            )

    @property
    def width(self) -> int:
        """K: the positions this slot takes in the LM's sequence."""
        return self.tokens.shape[2]


@dataclass
class _Call:
    """One forward call of the LM inside ``inject``: what the hooks learn about it, in order."""

    cached: int | None  # positions already in the call's KV cache; None: the call has no cache
    length: int | None = None  # positions the call embeds (set by the embedding hook)
    at_start: bool | None = None  # whether it holds the prefix (set by the embedding hook)


@dataclass
class _Active:
    slots: Sequence[SlotTokens | None]  # per slot (None: absent)
    widths: tuple[int, ...]  # positions each slot takes in this block
    prompt: torch.Tensor | None  # [prompt_tokens, embed_dim]
    first_length: int | None = None  # length of the block's first call, which holds the prefix
    call: _Call | None = None

    @property
    def slot_positions(self) -> int:
        return sum(self.widths)


class Injector:
    """Hooks a frozen causal LM so that, inside ``inject(...)``, its prefix carries perception.

    What is being injected is kept per thread, so one model (or several sharing one LM) can
    serve requests from several threads at once.
    """

    def __init__(
        self,
        lm: nn.Module,
        schedule: dict[int, tuple[int, ...]],
        num_slots: int,
        prompt_tokens: int,
        prefix_positions: str = "counted",
        slot_widths: Sequence[int] | None = None,
    ):
        """``schedule``: LM layer -> the encoder level each slot gets there, slot by slot (one
        ``injection_schedule`` per slot, zipped: slots may have different numbers of levels).
        ``slot_widths``: each slot's nominal K, the positions it takes when absent (default 1)."""
        if prefix_positions not in PREFIX_POSITIONS:
            raise ValueError(
                f"prefix_positions={prefix_positions!r} is not one of {', '.join(PREFIX_POSITIONS)}"
            )
        wrong = {layer: levels for layer, levels in schedule.items() if len(levels) != num_slots}
        if wrong:
            raise ValueError(f"schedule gives levels for other than {num_slots} slots: {wrong}")
        self.schedule = dict(schedule)
        self.num_slots = num_slots
        self.slot_widths = tuple(slot_widths) if slot_widths is not None else (1,) * num_slots
        if len(self.slot_widths) != num_slots or min(self.slot_widths, default=1) < 1:
            raise ValueError(
                f"slot_widths {self.slot_widths} must give K >= 1 for {num_slots} slots"
            )
        self.prompt_tokens = prompt_tokens
        self.prefix_positions = prefix_positions
        self._local = threading.local()
        layers = decoder_layers(lm)
        first = self.first_layer = min(self.schedule, default=len(layers))
        self._handles = [*self._position_hooks(lm)] if prefix_positions == "none" else []
        self._handles += [
            lm.register_forward_pre_hook(self._start_call, with_kwargs=True),
            lm.register_forward_hook(self._end_call),
            lm.get_input_embeddings().register_forward_hook(self._embed_prefix),
            *(
                layers[index].register_forward_pre_hook(
                    self._make_layer_hook(levels), with_kwargs=True
                )
                for index, levels in self.schedule.items()
            ),
            *(
                layers[index].register_forward_pre_hook(self._detach_slots, with_kwargs=True)
                for index in range(1, first)
            ),
        ]

    def _position_hooks(self, lm: nn.Module) -> list[Any]:
        """eP-ALM's positions: text from 0, no position for the prefix (see ``_shift_positions``
        and ``_unplace_prefix``)."""
        if "position_ids" not in inspect.signature(lm.forward).parameters:
            raise ValueError(
                f"prefix_positions='none' sets the text's position ids, which "
                f"{type(lm).__name__}.forward does not take"
            )
        model_type = getattr(lm.config, "model_type", None)
        path = _POSITION_EMBEDDINGS.get(model_type)
        if path is None:
            return []  # rotary positions: position 0 is no rotation
        table = operator.attrgetter(path)(lm)
        return [table.register_forward_hook(self._unplace_prefix)]

    @property
    def _active(self) -> _Active | None:
        return getattr(self._local, "active", None)

    @_active.setter
    def _active(self, active: _Active | None) -> None:
        self._local.active = active

    @property
    def prefix_length(self) -> int:
        """The prefix's positions: those of the current ``inject`` block, else the nominal ones."""
        active = self._active
        slots = active.slot_positions if active is not None else sum(self.slot_widths)
        return slots + self.prompt_tokens

    def widths(self, slots: Sequence[SlotTokens | None]) -> tuple[int, ...]:
        """The positions each slot takes for these tokens (an absent one: its nominal width)."""
        return tuple(
            nominal if s is None else s.width for s, nominal in zip(slots, self.slot_widths)
        )

    @property
    def active(self) -> bool:
        """Whether this thread is inside ``inject`` (the model owning this injector runs)."""
        return self._active is not None

    def placeholder_rows(self, layer: int) -> tuple[int, int]:
        """``(slots, length)`` for decoder layer ``layer`` in the current call: how many leading
        positions still hold the placeholder there (the slots, before the first injection layer,
        in a call that holds the prefix; else 0), and the call's length."""
        active = self._active
        call = active.call if active is not None else None
        if call is None or not call.at_start or layer >= self.first_layer:
            return 0, 0 if call is None or call.length is None else call.length
        return active.slot_positions, call.length

    @contextmanager
    def inject(
        self, slots: Sequence[SlotTokens | None], prompt: torch.Tensor | None
    ) -> Iterator[None]:
        """Within this block, LM calls get these perceptual tokens and this soft prompt."""
        if len(slots) != self.num_slots:
            raise ValueError(f"expected tokens for {self.num_slots} slots, got {len(slots)}")
        self._active = _Active(slots, self.widths(slots), prompt)
        try:
            yield
        finally:
            self._active = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    # --- hooks ------------------------------------------------------------------------------
    def _start_call(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        active = self._active
        if active is None:
            return None
        active.call = _Call(cached=_cached_length(args, kwargs))
        if self.prefix_positions == "none":
            return args, {**kwargs, "position_ids": self._shift_positions(args, kwargs)}
        return None

    def _shift_positions(self, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        """Position ids counted over [prefix][text] (ours in training, HF's in generation),
        moved back by the prefix's length: text starts at 0 and every prefix position is 0."""
        positions = kwargs.get("position_ids")
        if positions is None:  # derive them as HF's generate does, from the full mask
            mask, ids = kwargs.get("attention_mask"), kwargs.get("input_ids")
            if args or mask is None or ids is None or mask.ndim != 2:
                raise RuntimeError(
                    "prefix_positions='none' needs the LM called with keyword input_ids and a "
                    "2D attention_mask (or position_ids); this call has neither"
                )
            positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
            positions = positions[:, -ids.shape[1] :]
        return (positions - self.prefix_length).clamp(min=0)

    def _unplace_prefix(self, module: nn.Module, args: tuple, table: torch.Tensor):
        """Learned absolute positions: the prefix gets none (eP-ALM adds them to text only)."""
        if self._active is None or not self._call_at_start("the LM's position embeddings"):
            return None
        if table.ndim != 3 or table.shape[1] != self._active.call.length:
            raise RuntimeError(
                f"the LM's position embeddings gave {tuple(table.shape)}, not [batch, "
                f"{self._active.call.length}, hidden]: epalm cannot find the prefix's rows"
            )
        keep = torch.ones_like(table[:1, :, :1])
        keep[:, : self.prefix_length] = 0
        return table * keep

    def _end_call(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._active is not None:
            self._active.call = None

    def _embed_prefix(
        self, module: nn.Module, args: tuple, embeds: torch.Tensor
    ) -> torch.Tensor | None:
        active = self._active
        if active is None:
            return None
        call = active.call
        if call is None:
            raise RuntimeError(
                "the LM's input embeddings ran outside a call of the LM itself while injecting; "
                "epalm cannot tell whether this call holds the prefix"
            )
        call.length = embeds.shape[1]
        call.at_start = self._holds_prefix(active, call)
        if not call.at_start:
            return None
        if active.first_length is None:
            active.first_length = call.length
        batch = embeds.shape[0]
        placeholder = embeds.new_zeros(batch, active.slot_positions, embeds.shape[-1])
        parts = [placeholder]
        if active.prompt is not None:
            parts.append(active.prompt.to(embeds.dtype).expand(batch, -1, -1))
        parts.append(embeds[:, self.prefix_length :])
        return torch.cat(parts, dim=1)

    def _holds_prefix(self, active: _Active, call: _Call) -> bool:
        """Whether this call starts the sequence (and so holds the prefix), checked for sense."""
        if call.cached is None:  # no cache: every call holds the whole sequence
            if active.first_length is not None and call.length < active.first_length:
                raise RuntimeError(
                    f"an LM call holds {call.length} positions, fewer than the "
                    f"{active.first_length} of the first call, and no KV cache epalm can find "
                    "among its arguments: the LM's cache argument may have changed in this "
                    "transformers version"
                )
            at_start = True
        elif call.cached == 0:
            at_start = True
        elif call.cached < self.prefix_length or active.first_length is None:
            raise RuntimeError(
                f"the KV cache holds {call.cached} positions before any call that held the "
                f"{self.prefix_length}-token prefix: it was filled outside epalm's injection"
            )
        else:
            at_start = False
        if at_start and call.length < self.prefix_length:
            raise RuntimeError(
                f"an LM call that starts the sequence holds {call.length} positions, fewer than "
                f"the {self.prefix_length}-token prefix (slots + soft prompt)"
            )
        return at_start

    def _call_at_start(self, where: str) -> bool:
        """For the layer hooks: whether the current call holds the prefix; raises when the
        embedding hook has not seen the call."""
        active = self._active
        call = active.call if active is not None else None
        if call is None or call.at_start is None:
            raise RuntimeError(
                f"{where} ran before the LM's input embeddings in this call: epalm could not "
                "build the prefix (were inputs_embeds passed instead of input_ids?)"
            )
        return call.at_start

    def _make_layer_hook(self, levels: tuple[int, ...]):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            if self._active is None or not self._call_at_start(
                f"injection layer (levels {levels})"
            ):
                return None
            place = partial(self._place_tokens, active=self._active, levels=levels)
            return _with_hidden(args, kwargs, place, self._active.call.length)

        return hook

    def _detach_slots(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        """Cut gradients into the slots before their first injection layer, where a slot's
        hidden state is exactly zero.

        In LMs without biases (Llama, SmolLM2) the zero placeholder stays exactly zero through
        every layer; gradients flowing back into it cross RMSNorm at zero input, which scales
        them by 1/sqrt(eps), and overflow to NaN over enough layers (seen on SmolLM2-135M, first
        injection layer 17). Nothing trained changes a zero slot there: adapters leave the
        placeholder's rows alone (``epalm.adapters.base``) and a norm's gain multiplies zero, so
        no trained parameter's gradient changes. Where a slot is not zero (LMs with biases or
        learned positions), its gradient flows: trained biases or norms may lie behind it.
        """
        if self._active is None or not self._call_at_start("a decoder layer"):
            return None
        if not getattr(args[0] if args else kwargs.get("hidden_states"), "requires_grad", False):
            return None  # no gradient will flow here: spare the copy
        slots = self._active.slot_positions

        def cut(hidden: torch.Tensor) -> torch.Tensor:
            held = hidden[:, :slots]
            zero = (held == 0).all(-1, keepdim=True)
            return torch.cat([torch.where(zero, held.detach(), held), hidden[:, slots:]], 1)

        return _with_hidden(args, kwargs, cut, self._active.call.length)

    def _place_tokens(
        self, hidden: torch.Tensor, active: _Active, levels: tuple[int, ...]
    ) -> torch.Tensor:
        spans, start = [], 0
        for slot, width, level in zip(active.slots, active.widths, levels):
            held = hidden[:, start : start + width]
            spans.append(held if slot is None else _match_batch(slot.tokens[:, level], hidden))
            start += width
        return torch.cat([*spans, hidden[:, start:]], dim=1)


def _cached_length(args: tuple, kwargs: dict[str, Any]) -> int | None:
    """Positions held by the KV cache among a call's arguments (found by type, whatever its
    argument name), or None when the call has no cache."""
    caches = [v for v in (*args, *kwargs.values()) if isinstance(v, Cache)]
    if len(caches) > 1:
        raise RuntimeError(f"an LM call has {len(caches)} KV caches; epalm expects one")
    return caches[0].get_seq_length() if caches else None


def _with_hidden(
    args: tuple, kwargs: dict[str, Any], change, length: int
) -> tuple[tuple, dict[str, Any]]:
    """A decoder layer pre-hook's result: its hidden states (first argument) changed.

    The hidden states must span the call's ``length`` positions: anything else means the layer
    is called in a way epalm does not know, and changing it would be silently wrong.
    """
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3 or hidden.shape[1] != length:
        found = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise RuntimeError(
            f"a decoder layer's first argument should be the hidden states [batch, {length}, "
            f"hidden]; found {found}: epalm cannot find the slots to inject into"
        )
    if args:
        return (change(hidden), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": change(hidden)}


def _match_batch(tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Cast to the LM's dtype and repeat for beam search, which expands each sample in place."""
    repeats, rest = divmod(hidden.shape[0], tokens.shape[0])
    if rest:
        raise RuntimeError(
            f"LM batch {hidden.shape[0]} is not a multiple of the perception batch {tokens.shape[0]}"
        )
    return tokens.to(hidden.dtype).repeat_interleave(repeats, dim=0)
