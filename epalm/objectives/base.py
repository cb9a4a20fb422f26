"""The Objective interface and its registry. The trainer asks the run's objective for the
model, the loss, the batches, validation and the test report, and never which task it trains."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from epalm.training.settings import RunSettings
    from epalm.training.task_data import TaskData

_OBJECTIVES: dict[str, type[Objective]] = {}
# the built-ins, imported when first asked for (they import the models)
_BUILT_IN = {
    "generative": "epalm.objectives.generative",
    "contrastive": "epalm.objectives.contrastive",
}


class Objective(ABC):
    """One kind of training. ``loss_module(model)``'s forward returns the loss *summed* over
    what ``count`` counts (target tokens, pairs), so that the trainer can divide by the global
    count and any split over processes and accumulation gives one gradient."""

    @abstractmethod
    def build_model(self, settings: RunSettings) -> nn.Module:
        """The model a run trains, freshly initialised."""

    @abstractmethod
    def load_model(self, directory: Path) -> nn.Module:
        """A model saved by its ``save_pretrained``."""

    @abstractmethod
    def loss_module(self, model: nn.Module) -> nn.Module:
        """A module (DDP wraps it) whose ``forward(task=..., **inputs)`` returns
        ``(summed loss, count)``."""

    @abstractmethod
    def count(self, model: nn.Module, batch: dict[str, Any]) -> int:
        """What a batch's summed loss is summed over."""

    @abstractmethod
    def collator(self, model: nn.Module, task: TaskData) -> Callable:
        """Training batches of ``task`` from dataset items."""

    @abstractmethod
    def validate(self, model: nn.Module, task: TaskData) -> dict[str, float]:
        """Metrics on ``task``'s validation subset (``task.run.task.metric`` among them)."""

    @abstractmethod
    def evaluate(
        self,
        model: nn.Module,
        tasks: list[TaskData],
        out_root: Path,
        checkpoint: Path | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Score every task on its evaluation split into ``out_root``; a row per task with its
        ``metric``, ``split``, ``seen`` (and a control such as ``blind``) and ``summary``.
        ``checkpoint``: where the scored model is saved, for what belongs beside it."""

    #: Whether the model reads what enters the first trained block of a perceiver whose top
    #: alone trains (``Perceiver.from_block``), so that the feature cache can hold it.
    reads_block_inputs: bool = False

    def feature_levels(self) -> int | None:
        """How many last levels' summaries the model reads from the feature cache (None: what
        the run's connector reads)."""
        return None

    def describe(self, model: nn.Module) -> str | None:
        """A line for the training log on how the model is put together."""
        return None


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    def register(cls: type[Objective]) -> type[Objective]:
        _OBJECTIVES[name] = cls
        return cls

    return register


def objectives() -> list[str]:
    return sorted({*_OBJECTIVES, *_BUILT_IN})


def objective_for(settings: RunSettings) -> Objective:
    """The objective of a run's task (every job of a multi-task run must share one)."""
    names = {run.task.objective for run in settings.task_runs().values()}
    if len(names) != 1:
        raise ValueError(f"the jobs of one run must share an objective; got {sorted(names)}")
    (name,) = names
    if name not in _OBJECTIVES and name in _BUILT_IN:
        importlib.import_module(_BUILT_IN[name])
    if name not in _OBJECTIVES:
        raise ValueError(f"task.objective={name!r}: choose one of {', '.join(objectives())}")
    return _OBJECTIVES[name]()
