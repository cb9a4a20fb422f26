"""LoRA (Hu et al., 2021) on the attention's query and value projections, as VL-Adapter applies
it, through HF ``peft``: its LoRA layers replace the chosen projections inside the LM (their
frozen weights move to ``<projection>.base_layer``), one peft adapter per adapter set."""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from epalm.adapters.architectures import submodule
from epalm.adapters.base import AdapterContext, LMAdapter, register_adapter
from epalm.injection import decoder_layers

ROLES = ("query", "value")
SHARED = "shared"  # the peft adapter name of a shared set


@register_adapter("lora")
class LoRAAdapters(LMAdapter):
    changes_lm = True

    def __init__(
        self,
        context: AdapterContext,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        targets: tuple[str, ...] | list[str] = ROLES,
    ) -> None:
        super().__init__(context)
        unknown = sorted(set(targets) - set(ROLES))
        if unknown or not targets:
            raise ValueError(f"lora targets {list(targets)}: choose from {', '.join(ROLES)}")
        self._lm = [context.lm]  # not a submodule: the LM belongs to the model
        layers = decoder_layers(context.lm)
        where = {module: name for name, module in context.lm.named_modules()}
        paths = context.parts.roles()
        chosen = {
            where[submodule(layers[i], paths[role], f"layer {i}'s {role}")]: i
            for i in context.layers
            for role in targets
        }
        fused = any(isinstance(context.lm.get_submodule(name), Conv1D) for name in chosen)
        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=sorted(chosen),
            fan_in_fan_out=fused,  # GPT-2's Conv1D stores its weight transposed
        )
        self.names = [SHARED] if self.shared else list(self.tasks)
        with warnings.catch_warnings():  # peft warns that a second adapter is one more: it is
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            for name in self.names:
                inject_adapter_in_model(config, context.lm, adapter_name=name)
        self._layers = {
            module_name: context.lm.get_submodule(module_name) for module_name in chosen
        }
        for module_name, layer in self._layers.items():
            if not isinstance(layer, LoraLayer):
                raise RuntimeError(f"peft did not put a LoRA layer at {module_name}")
            for name in self.names:
                hook = _placeholder_hook(self, chosen[module_name])
                self._handles.append(layer.lora_B[name].register_forward_hook(hook))
        self._trainable()
        self._switched()

    def _trainable(self) -> None:
        # peft's set_adapter freezes the inactive adapters; every set stays trainable here
        for name in self.lm_parameter_names():
            self._lm[0].get_parameter(name).requires_grad_(True)

    def _switched(self) -> None:
        active = self.names[self.set_index()]
        stale = [layer for layer in self._layers.values() if layer.active_adapters != [active]]
        for layer in stale:
            layer.set_adapter(active)
        if stale:  # only set_adapter freezes: a step on the active set has nothing to undo
            self._trainable()

    def lm_parameter_names(self) -> set[str]:
        names = set()
        for module_name, layer in self._layers.items():
            for attribute in LoraLayer.adapter_layer_names:
                for param_name, _ in getattr(layer, attribute).named_parameters():
                    names.add(f"{module_name}.{attribute}.{param_name}")
        return names

    def frozen_name(self, name: str) -> str:
        return name.replace(".base_layer.", ".")


def _placeholder_hook(adapters: LoRAAdapters, layer: int):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return adapters.leave_placeholder(output, layer)

    return hook
