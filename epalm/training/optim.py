"""Optimisation recipes, by name (``train.optimizer``): which parameter groups AdamW gets and
how their learning rates move.

- ``epalm`` (the default): projections and prompt each split into decayed weights and undecayed
  biases (HF's convention), every group warmed up from 0 and decayed per step by a cosine to
  ``min_lr``.
- ``ep-alm-vqa`` and ``ep-alm-caption``: what eP-ALM's released code does (mshukor/eP-ALM at
  9ecfeb9), its VQA scripts and its caption scripts respectively; ``faithful=true`` picks the one
  for the task. Both warm up in eP-ALM's stairs and decay per epoch, and, as its
  ``scheduler_groups: 0`` does, only the first group follows the schedule; the other keeps its lr.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # settings import the recipes' names from here
    from epalm.training.settings import TrainSettings

# eP-ALM's warmup (accelerate_training/vqa.py:57,120-122, caption.py:48,98-99): the scheduler
# is stepped every 100 iterations of the first epoch, 4 times, from its configs' warmup_lr,
# which is half the lr in every released config.
EP_ALM_STAIRS, EP_ALM_STAIR_STEPS, EP_ALM_WARMUP_FROM = 4, 100, 0.5


@dataclass(frozen=True)
class Schedule:
    """What a recipe needs to know of the run to build its schedule."""

    total_steps: int
    steps_per_epoch: int


Recipe = Callable[[nn.Module, "TrainSettings", Schedule], tuple[torch.optim.AdamW, object]]
_RECIPES: dict[str, Recipe] = {}


def register_recipe(name: str) -> Callable[[Recipe], Recipe]:
    """Add an optimisation recipe: ``fn(model, train_settings, schedule) -> (optimizer,
    lr_scheduler)``, chosen with ``train.optimizer=NAME``."""

    def add(fn: Recipe) -> Recipe:
        _RECIPES[name] = fn
        return fn

    return add


def recipes() -> list[str]:
    return sorted(_RECIPES)


def check_recipe(name: str) -> None:
    if name not in _RECIPES:
        raise ValueError(f"train.optimizer={name!r} is not one of {', '.join(recipes())}")


def build_optimization(
    model: nn.Module, train: TrainSettings, schedule: Schedule
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """The optimizer and lr schedule of ``train.optimizer``'s recipe."""
    check_recipe(train.optimizer)
    return _RECIPES[train.optimizer](model, train, schedule)


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    return named


def _partition(
    named: list[tuple[str, nn.Parameter]], chosen: Callable[[str, nn.Parameter], bool]
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The parameters ``chosen`` picks, then the others."""
    picked, others = [], []
    for name, param in named:
        (picked if chosen(name, param) else others).append(param)
    return picked, others


def _adamw(groups: list[dict]) -> torch.optim.AdamW:
    # an empty group (no soft prompt) would only shift the others' indices
    return torch.optim.AdamW([g for g in groups if g["params"]])


# --- epalm's own ---------------------------------------------------------------------------------
def trained_part(name: str, towers: tuple[str, ...] = ()) -> str:
    """Which trained part a parameter belongs to: ``prompt``, ``connectors``, ``towers`` (a
    pretrained tower's own weights, unlocked: names under one of the model's ``towers``
    prefixes), or ``adapter`` (modules inside the LM or a tower, heads, and the LM's own norms
    and biases when unfrozen)."""
    if name.startswith("prompt."):
        return "prompt"
    if name.startswith("connectors."):
        return "connectors"
    if towers and name.startswith(towers):
        return "towers"
    return "adapter"


def optimizer_for(model: nn.Module, train: TrainSettings) -> torch.optim.AdamW:
    """Param groups: projections, prompt and adapter, each split into decayed weights and
    undecayed biases and norms (HF's convention), each part at its own lr. Only trainable
    tensors are handed to the optimizer. A model names where its pretrained towers live with a
    ``TOWER_PREFIXES`` attribute (the dual encoder); their unlocked weights train at
    ``tower_lr``, since the lr that suits new heads wrecks pretrained weights."""
    adapter = train.lr if train.adapter_lr is None else train.adapter_lr
    lrs = {
        "prompt": train.prompt_lr,
        "connectors": train.lr,
        "adapter": adapter,
        "towers": adapter if train.tower_lr is None else train.tower_lr,
    }
    towers = tuple(getattr(model, "TOWER_PREFIXES", ()))
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in _trainable(model):
        groups.setdefault((trained_part(name, towers), param.ndim >= 2), []).append(param)
    return _adamw(
        [
            {
                "params": params,
                "lr": lrs[part],
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


@register_recipe("epalm")
def _epalm(model: nn.Module, train: TrainSettings, schedule: Schedule):
    optimizer = optimizer_for(model, train)
    return optimizer, cosine_schedule(
        optimizer,
        total_steps=schedule.total_steps,
        warmup_steps=round(train.warmup_ratio * schedule.total_steps),
        min_lr=train.min_lr,
    )


# --- eP-ALM's code as released ----------------------------------------------------------------
@register_recipe("ep-alm-vqa")
def _ep_alm_vqa(model: nn.Module, train: TrainSettings, schedule: Schedule):
    """eP-ALM's VQA scripts hand ``config['optimizer']`` to ``create_optimizer``
    (accelerate_training/vqa.py:377, gqa.py:354, video_qa.py:366), whose ``prompt_lr`` branch
    (optim/optim_factory.py:111-117) makes two groups: everything but the prompt at the lr, then
    the prompt at ``prompt_lr``, and AdamW's weight decay applies to both, biases included
    (optim_factory.py:130). Only the first group is scheduled."""
    prompt, other = _partition(_trainable(model), lambda name, _: name.startswith("prompt."))
    decay = train.weight_decay
    optimizer = _adamw(
        [
            {"params": other, "lr": train.lr, "weight_decay": decay, "name": "other"},
            {"params": prompt, "lr": train.prompt_lr, "weight_decay": decay, "name": "prompt"},
        ]
    )
    return optimizer, ep_alm_schedule(optimizer, train, schedule)


@register_recipe("ep-alm-caption")
def _ep_alm_caption(model: nn.Module, train: TrainSettings, schedule: Schedule):
    """eP-ALM's caption scripts hand the whole config, not its ``optimizer`` section, to
    ``create_optimizer`` (accelerate_training/caption.py:293, video_caption.py:319,
    audio_caption.py:302), so ``prompt_lr`` is never found and the plain branch runs
    (optim_factory.py:118-123, 24-37): biases and other 1-D tensors undecayed, then every weight,
    prompt included, decayed, both at the lr. Only the first group, the biases, is scheduled;
    the weights and the prompt train at a constant lr."""
    flat, weights = _partition(
        _trainable(model), lambda name, p: p.ndim <= 1 or name.endswith(".bias")
    )
    optimizer = _adamw(
        [
            {"params": flat, "lr": train.lr, "weight_decay": 0.0, "name": "bias"},
            {
                "params": weights,
                "lr": train.lr,
                "weight_decay": train.weight_decay,
                "name": "weight",
            },
        ]
    )
    return optimizer, ep_alm_schedule(optimizer, train, schedule)


def ep_alm_schedule(
    optimizer: torch.optim.Optimizer, train: TrainSettings, schedule: Schedule
) -> torch.optim.lr_scheduler.LambdaLR:
    """eP-ALM's timm cosine scheduler as its training loops step it (scheduler/cosine_lr.py,
    accelerate_training/vqa.py:120-122,439-440), on the first group only (``scheduler_groups:
    0``, scheduler/scheduler.py update_groups): in the first epoch, stairs from half the lr,
    stepped every 100 steps, then the lr itself; from epoch e >= 1 on, the cosine of e over the
    configured epochs, down to ``min_lr``."""
    epochs = max(train.epochs, 1e-9)
    per_epoch = max(1, schedule.steps_per_epoch)

    def first_group(base_lr: float):
        floor = min(train.min_lr / base_lr, 1.0) if base_lr > 0 else 0.0

        def at(step: int) -> float:
            epoch = step // per_epoch
            if epoch == 0:
                # stepped after the optimizer at iterations 0, 100, ...: 101 steps on stair 0
                stair = min(max(step - 1, 0) // EP_ALM_STAIR_STEPS, EP_ALM_STAIRS)
                return EP_ALM_WARMUP_FROM + (1 - EP_ALM_WARMUP_FROM) * stair / EP_ALM_STAIRS
            if epoch >= epochs:  # timm's cycle_limit=1: past the cycle, min_lr
                return floor
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * epoch / epochs))

        return at

    factors = [first_group(optimizer.param_groups[0]["lr"])]
    factors += [lambda step: 1.0] * (len(optimizer.param_groups) - 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
