"""Trainable modules inside the frozen LM (VL-Adapter): bottleneck adapters, Compacter,
Hyperformer and LoRA (through peft), one set shared by every task or one per task, plus the
LM's own norms and biases as trainable switches. ``adapter=NAME`` picks one; a new method is
``register_adapter(NAME)`` on a class built from an ``AdapterContext``; a new architecture is
``register_architecture(...)``."""

from __future__ import annotations

from torch import nn

from epalm.adapters import bottleneck, compacter, hyperformer, lora  # noqa: F401  (registers)
from epalm.adapters.architectures import known_architectures, layer_parts, register_architecture
from epalm.adapters.base import (
    AdapterContext,
    LMAdapter,
    SublayerAdapters,
    adapter_builder,
    adapter_names,
    register_adapter,
)
from epalm.adapters.trainability import unfreeze
from epalm.config import AdapterConfig
from epalm.injection import Injector, decoder_layers

__all__ = [
    "AdapterContext",
    "LMAdapter",
    "SublayerAdapters",
    "adapted_layers",
    "adapter_names",
    "attach_adapter",
    "changes_lm",
    "known_architectures",
    "register_adapter",
    "register_architecture",
]


def adapted_layers(spec: list[int] | None, num_layers: int) -> list[int]:
    """``adapter.layers``: None (every layer) or ``[first, last]``, inclusive."""
    if spec is None:
        return list(range(num_layers))
    if len(spec) != 2 or not 0 <= spec[0] <= spec[1] < num_layers:
        raise ValueError(
            f"adapter.layers={list(spec)}: give [first, last] with 0 <= first <= last <= "
            f"{num_layers - 1}, or null for every layer"
        )
    return list(range(spec[0], spec[1] + 1))


def attach_adapter(
    lm: nn.Module, config: AdapterConfig, injector: Injector, tasks: list[str]
) -> tuple[LMAdapter | None, list[str]]:
    """The adapter ``config`` names, attached to ``lm`` (None for ``none``), then the LM's
    norms and biases unfrozen as ``config`` asks: the adapter and the names of those."""
    adapter = None
    if config.name != "none":
        context = AdapterContext(
            lm=lm,
            injector=injector,
            parts=layer_parts(lm),
            layers=adapted_layers(config.layers, len(decoder_layers(lm))),
            hidden_size=lm.config.get_text_config().hidden_size,
            tasks=tasks,
            shared=config.shared,
        )
        adapter = adapter_builder(config.name)(context, **config.kwargs)
    owned = adapter.lm_parameter_names() if adapter is not None else set()
    return adapter, unfreeze(lm, norms=config.norms, biases=config.biases, skip=owned)


def changes_lm(config: AdapterConfig) -> bool:
    """Whether a model with this adapter config changes its LM's own modules or weights (peft's
    LoRA layers, trained norms or biases), so that its LM cannot serve another model."""
    if config.norms or config.biases:
        return True
    return config.name != "none" and getattr(adapter_builder(config.name), "changes_lm", True)
