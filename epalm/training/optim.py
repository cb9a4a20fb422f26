"""eP-ALM's optimisation: AdamW with one learning rate for the projections and another for the
soft prompt, weight decay on weights only, and a cosine schedule to ``min_lr`` after a warmup."""

from __future__ import annotations

import math

import torch
from torch import nn

from epalm.training.settings import TrainSettings


def optimizer_for(model: nn.Module, train: TrainSettings) -> torch.optim.AdamW:
    """Param groups: projections and prompt, each split into decayed weights and undecayed
    biases (HF's convention). Only trainable tensors are handed to the optimizer."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "prompt" if name.startswith("prompt.") else "connectors"
        groups.setdefault((part, param.ndim >= 2), []).append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": train.prompt_lr if part == "prompt" else train.lr,
                "weight_decay": train.weight_decay if decayed else 0.0,
                "name": f"{part}{'' if decayed else '.bias'}",
            }
            for (part, decayed), params in sorted(groups.items())
        ]
    )


def cosine_schedule(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0, then cosine decay of every group's lr down to ``min_lr``."""

    def factor(base_lr: float):
        floor = min(min_lr / base_lr, 1.0) if base_lr > 0 else 0.0

        def at(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        return at

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [factor(group["lr"]) for group in optimizer.param_groups]
    )
