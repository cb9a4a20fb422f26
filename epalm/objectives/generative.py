"""``generative``: the frozen LM writes the caption or the answer (eP-ALM, VL-Adapter, the token
connectors). Its loss is the target tokens' cross-entropy, summed; it is scored on generations,
seen and blind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from epalm.model import EPALM
from epalm.objectives.base import Objective, register_objective
from epalm.tasks.collate import Collator
from epalm.training.evaluate import predict_samples, score
from epalm.training.settings import RunSettings
from epalm.training.task_data import TaskData, evaluate_tasks


class TargetLoss(nn.Module):
    """The model's summed target loss as a module's forward, so DDP can wrap it."""

    def __init__(self, model: EPALM) -> None:
        super().__init__()
        self.model = model

    def forward(self, task: str | None = None, **batch: Any) -> tuple[torch.Tensor, int]:
        with self.model.using_task(task):
            return self.model.target_loss(**batch)


@register_objective("generative")
class Generative(Objective):
    def build_model(self, settings: RunSettings) -> EPALM:
        model = EPALM(settings.model_config())
        model.frozen_dropout = settings.train.frozen_dropout
        return model

    def load_model(self, directory: Path) -> EPALM:
        return EPALM.from_pretrained(directory)

    def loss_module(self, model: EPALM) -> nn.Module:
        return TargetLoss(model)

    def count(self, model: EPALM, batch: dict[str, Any]) -> int:
        return model.target_count(batch["labels"])

    def collator(self, model: EPALM, task: TaskData) -> Callable:
        # one caption per training pair (one_per_caption): no draw
        return Collator(model, train=False, vqa_eval=task.run.task.vqa_eval, task=task.model_task)

    def validate(self, model: EPALM, task: TaskData) -> dict[str, float]:
        run, label = task.run, f"{task.name} " if task.model_task else ""
        predictions = predict_samples(
            model,
            task.val_set,
            task=run.task.name,
            generation=run.eval.generation,
            batch_size=run.eval.batch_size,
            desc=f"validating {label}".strip(),
            task_id=task.model_task,
        )
        return score(run.task.name, predictions, task.val, run.task.vqa_eval)["metrics"]

    def evaluate(
        self,
        model: EPALM,
        tasks: list[TaskData],
        out_root: Path,
        checkpoint: Path | None = None,
    ) -> dict[str, dict[str, Any]]:
        return evaluate_tasks(model, tasks, out_root)

    def describe(self, model: EPALM) -> str:
        return f"perception reaches the LM as {model.describe_slots()}"
