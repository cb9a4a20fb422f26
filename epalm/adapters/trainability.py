"""Which of the frozen LM's own parameters train beside an adapter: its norms (VL-Adapter
unfreezes the LayerNorms) and its biases (BitFit). A policy over the LM's parameters, applied
after the LM is frozen."""

from __future__ import annotations

from torch import nn


def is_norm(module: nn.Module) -> bool:
    """LayerNorm and the architectures' own norms (LlamaRMSNorm, Qwen2RMSNorm, ...)."""
    return isinstance(module, nn.LayerNorm | nn.RMSNorm) or type(module).__name__.endswith("Norm")


def norm_parameters(lm: nn.Module) -> list[str]:
    return [
        f"{module_name}.{name}" if module_name else name
        for module_name, module in lm.named_modules()
        if is_norm(module)
        for name, _ in module.named_parameters(recurse=False)
    ]


def bias_parameters(lm: nn.Module, skip: set[str]) -> list[str]:
    return [
        name for name, _ in lm.named_parameters() if name.endswith(".bias") and name not in skip
    ]


def unfreeze(lm: nn.Module, *, norms: bool, biases: bool, skip: set[str]) -> list[str]:
    """Make the LM's norms and/or biases trainable (``skip``: an adapter's own parameters);
    returns their names. Asking for a kind the LM has none of is an error, not a no-op."""
    chosen = []
    for wanted, kind, names in (
        (norms, "norm", norm_parameters(lm) if norms else []),
        (biases, "bias", bias_parameters(lm, skip) if biases else []),
    ):
        if wanted and not names:
            raise ValueError(
                f"adapter.{'norms' if kind == 'norm' else 'biases'}=true, but "
                f"{type(lm).__name__} has no {kind} parameters to train"
            )
        chosen += names
    for name in chosen:
        lm.get_parameter(name).requires_grad_(True)
    return chosen
