"""What every LM adapter shares: the registry, the task it adapts for, and the hooks that add a
trained change to the output of chosen sublayers of the frozen LM.

An adapter acts only inside its model's own calls (while the model's injector is active), so
a frozen LM shared by several models (the demo) is adapted for the one that is running. Before
the first injection layer the perceptual slots still hold the placeholder, which carries no
information: adapters leave those rows alone, so nothing trained reaches the text through them
and the injector's gradient cut there changes no trained parameter's gradient.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from epalm.adapters.architectures import LayerParts, submodule
from epalm.injection import Injector, decoder_layers

SUBLAYERS = ("attention", "feed_forward")  # where bottleneck-style adapters go, in each layer


class ThreadTask(threading.local):
    """A per-thread ``task`` attribute that survives pickling (as unset): DataLoader workers
    started by spawn get a pickled copy of the model."""

    def __reduce__(self) -> tuple[type, tuple]:
        return ThreadTask, ()


@dataclass
class AdapterContext:
    """What an adapter method is built from."""

    lm: nn.Module
    injector: Injector
    parts: LayerParts
    layers: list[int]  # the decoder layers that get adapters
    hidden_size: int
    tasks: list[str]  # the tasks the model is trained for; the first is the default
    shared: bool  # one adapter set for every task, else one per task


class LMAdapter(nn.Module):
    """A method that trains modules inside the frozen LM; subclasses attach in ``__init__``."""

    # whether it changes the LM's own modules in place (then the LM cannot be shared)
    changes_lm: bool = False

    def __init__(self, context: AdapterContext) -> None:
        super().__init__()
        if not context.tasks:
            raise ValueError("an adapter needs at least one task name (adapter.tasks)")
        self.tasks = list(context.tasks)
        self.shared = context.shared
        self._injector = context.injector
        self._local = ThreadTask()
        self._handles: list[Any] = []

    @property
    def sets(self) -> int:
        """How many adapter sets there are: one, or one per task."""
        return 1 if self.shared else len(self.tasks)

    @property
    def task_index(self) -> int:
        return getattr(self._local, "task", 0)

    def set_index(self) -> int:
        """The adapter set of the task being run."""
        return 0 if self.shared else self.task_index

    @contextmanager
    def task(self, name: str) -> Iterator[None]:
        """Within the block, this thread's calls use the adapters of task ``name``."""
        if name not in self.tasks:
            raise KeyError(f"no adapters for task {name!r}; this model has {self.tasks}")
        before = self.task_index
        self._local.task = self.tasks.index(name)
        self._switched()
        try:
            yield
        finally:
            self._local.task = before
            self._switched()

    def _switched(self) -> None:
        """Called when the task changes (LoRA switches peft's active adapter)."""

    def lm_parameter_names(self) -> set[str]:
        """Names (in the LM) of parameters this method added inside the LM's own modules."""
        return set()

    def frozen_name(self, name: str) -> str:
        """The name a frozen LM tensor had before this method attached (for digests)."""
        return name

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def leave_placeholder(self, change: torch.Tensor, layer: int) -> torch.Tensor:
        """``change`` (of an output inside decoder layer ``layer``) with the rows of slots that
        still hold the placeholder set to zero, by slicing, so no gradient is computed there."""
        slots, length = self._injector.placeholder_rows(layer)
        if not slots:
            return change
        shape = change.shape
        if change.numel() % (length * shape[-1]):
            raise RuntimeError(
                f"an adapted output of decoder layer {layer} has shape {tuple(shape)}, which is "
                f"not [batch, {length}, hidden] (or those rows flattened): epalm cannot find the "
                "perceptual slots in it"
            )
        rows = change.reshape(-1, length, shape[-1])
        rows = torch.cat([torch.zeros_like(rows[:, :slots]), rows[:, slots:]], dim=1)
        return rows.reshape(shape)


class SublayerAdapters(LMAdapter):
    """Adapters that add ``delta(h)`` to the output ``h`` of the attention and of the
    feed-forward of each chosen layer (VL-Adapter's placement: the adapter's own residual, before
    the layer's). Subclasses build ``delta`` per site and set."""

    def __init__(self, context: AdapterContext) -> None:
        super().__init__(context)
        self.hidden_size = context.hidden_size
        self.sites = [(layer, role) for layer in context.layers for role in SUBLAYERS]
        layers = decoder_layers(context.lm)
        paths = {"attention": context.parts.attention_output}
        paths["feed_forward"] = context.parts.feed_forward_output
        for index, (layer, role) in enumerate(self.sites):
            module = submodule(layers[layer], paths[role], f"layer {layer}'s {role}")
            hook = partial(self._adapt, site=index, layer=layer)
            self._handles.append(module.register_forward_hook(hook))

    def delta(self, hidden: torch.Tensor, site: int) -> torch.Tensor:
        raise NotImplementedError

    def _adapt(self, module: nn.Module, args: tuple, output: Any, *, site: int, layer: int):
        if not self._injector.active:
            return None
        hidden, rest = (output[0], output[1:]) if isinstance(output, tuple) else (output, None)
        if not isinstance(hidden, torch.Tensor) or hidden.shape[-1] != self.hidden_size:
            found = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden)
            raise RuntimeError(
                f"the {self.sites[site][1]} output of decoder layer {layer} is {found}, not "
                f"hidden states of width {self.hidden_size}: the architecture map points at the "
                "wrong module"
            )
        weight = next(self.parameters())
        change = self.delta(hidden.to(weight.dtype), site).to(hidden.dtype)
        adapted = hidden + self.leave_placeholder(change, layer)
        return adapted if rest is None else (adapted, *rest)


Builder = Callable[..., LMAdapter]
_ADAPTERS: dict[str, Builder] = {}


def register_adapter(name: str) -> Callable[[Builder], Builder]:
    """Add an LM adapter method, chosen with ``adapter=NAME`` (or ``AdapterConfig(name=...)``):
    a class (or function) called as ``builder(context: AdapterContext, **adapter.kwargs)`` that
    returns an ``LMAdapter`` attached to ``context.lm``."""

    if name == "none":
        raise ValueError("adapter name 'none' is taken: it means no adapter")

    def add(builder: Builder) -> Builder:
        _ADAPTERS[name] = builder
        return builder

    return add


def adapter_names() -> list[str]:
    return sorted(["none", *_ADAPTERS])


def adapter_builder(name: str) -> Builder:
    if name not in _ADAPTERS:
        raise ValueError(f"adapter {name!r} is not one of {', '.join(adapter_names())}")
    return _ADAPTERS[name]
