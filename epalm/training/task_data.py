"""One task's data for a run: its splits, where its perception comes from (the feature cache or
media), its datasets, and the test report. A multi-task run holds one of these per task."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from epalm.atomic import atomic_write_text
from epalm.data.manifest import Sample
from epalm.encoders.blocks import changed_parts
from epalm.model import EPALM
from epalm.tasks.vqa import unanswerable_note, unanswerable_questions
from epalm.training.data import (
    eval_samples,
    load_split,
    one_per_caption,
    sample_dataset,
    split_sources,
    subset,
)
from epalm.training.evaluate import evaluate, headline, log_summary, reported
from epalm.training.features import features_for
from epalm.training.settings import RunSettings, SettingsError

if TYPE_CHECKING:
    from epalm.objectives.base import Objective

log = logging.getLogger(__name__)


@dataclass
class TaskData:
    name: str  # the task's id ("image-vqa")
    run: RunSettings  # its job's settings: data, task, encoder, evaluation
    model_task: str | None  # what the model calls it (None: a single-task model)
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    features: dict[str, Any] | None  # cached perceiver outputs, or None: media every step
    sources: dict[str, dict[str, Any]]  # which file each split was read from
    model: nn.Module  # the run's model: an EPALM, a dual encoder (anything with .perceivers)

    @property
    def num_workers(self) -> int:
        return 0 if self.features is not None else self.run.train.num_workers

    def dataset(self, samples: list[Sample], *, train: bool) -> Any:
        return sample_dataset(samples, self.run, self.model.perceivers, self.features, train=train)

    @cached_property
    def val_set(self) -> Any:
        return self.dataset(self.val, train=False)


def load_task_data(
    name: str,
    run: RunSettings,
    model: nn.Module,
    accelerator: Any,
    *,
    multitask: bool,
    test_only: bool = False,
    objective: Objective | None = None,
) -> TaskData:
    """Task ``name``'s splits (only the evaluation split with ``test_only``) and perception;
    the feature cache is filled where it is used, with what ``objective``'s model reads."""
    train = [] if test_only else one_per_caption(load_split(run, "train"))
    val = load_split(run, "val") if "val" in run.data.splits and not test_only else []
    val = subset(val, run.train.val_samples, run.seed)
    test = eval_samples(run)
    if run.task.sample_kind == "vqa":
        lost = unanswerable_questions(train, run.task.vqa_eval)
        if lost:
            log.warning(unanswerable_note(lost, len(train), run.task.vqa_eval, "train"))
    features = None
    from_block = objective is not None and objective.reads_block_inputs
    if use_cache(run, model, from_block=from_block):
        perceiver = model.perceivers[run.modality]
        features = features_for(
            run,
            perceiver,
            [*train, *val, *test],
            accelerator,
            levels=objective.feature_levels() if objective is not None else None,
            below=perceiver.first_changed_block() if from_block else None,
        )
    counts = {} if test_only else {"train": len(train)}
    counts[run.eval.split] = len(test)
    if val:
        counts["val"] = len(val)
    sources = split_sources(run, counts)
    log.info(
        "%s: perception from %s",
        name,
        "the feature cache" if features is not None else "media, every step",
    )
    return TaskData(
        name, run, name if multitask else None, train, val, test, features, sources, model
    )


def use_cache(run: RunSettings, model: nn.Module, *, from_block: bool = False) -> bool:
    """Frozen features from the cache, unless augmenting, or unless the encoder's dropout acts
    in training (``train.frozen_dropout``): cached features were computed without it. Where
    the encoder trains or is adapted, only ``from_block`` (a model that reads what enters the
    first changed block) and only a frozen bottom make a cache."""
    if run.train.features == "media" or (run.train.features == "auto" and run.train.augment):
        return False
    perceiver = model.perceivers[run.modality]
    if from_block and (start := perceiver.first_changed_block()):
        log.info(
            "features from the cache: what enters block %d of the %s encoder, below which it "
            "is frozen; blocks %d.. run every step",
            start,
            run.modality,
            start,
        )
        return True
    if changed := changed_parts(perceiver):
        if run.train.features == "cache":
            raise SettingsError(
                f"train.features=cache: the {run.modality} encoder is trained or adapted "
                f"({changed[0]} and {len(changed) - 1} more), so the cached features are not its "
                "outputs; set train.features=media"
            )
        log.info("features from media: the %s encoder is trained or adapted", run.modality)
        return False
    noisy = perceiver.stochastic_layers() if run.train.frozen_dropout else []
    if not noisy:
        return True
    if run.train.features == "cache":
        raise SettingsError(
            f"train.features=cache cannot apply the encoder's dropout or drop-path ({noisy[0]}"
            f" and {len(noisy) - 1} more) that train.frozen_dropout turns on; set "
            "train.features=media or train.frozen_dropout=false"
        )
    log.info(
        "features from media: the encoder's dropout / drop-path (%d layers) acts in training "
        "(train.frozen_dropout)",
        len(noisy),
    )
    return False


def evaluate_tasks(
    model: EPALM, tasks: list[TaskData], out_root: Path
) -> dict[str, dict[str, Any]]:
    """Score every task on its evaluation split, seen and blind, into ``out_root/<split>`` (one
    task) or ``out_root/<task>/<split>``; a multi-task run also writes ``out_root/summary.json``.
    Returns a row per task: its metric, split, headline numbers and summary line."""
    rows = {}
    for task in tasks:
        run = task.run
        where = out_root / task.name if task.model_task else out_root
        report = evaluate(
            model,
            task.test,
            lambda samples, task=task: task.dataset(samples, train=False),
            run,
            out_dir=where / run.eval.split,
            num_workers=task.num_workers,
            sources=task.sources,
            task_id=task.model_task,
        )
        line = log_summary(run, report, label=task.name if task.model_task else "")
        rows[task.name] = {
            "metric": run.task.metric,
            "split": run.eval.split,
            **headline(run.task.name, report),
            "summary": line,
        }
    if len(tasks) > 1:
        _write_summary(out_root / "summary.json", rows)
    return rows


def _write_summary(path: Path, rows: dict[str, dict[str, Any]]) -> None:
    """Every task's score and blind score, and their means in reported units (%, CIDEr x 100)."""
    means = {
        mode: sum(reported(r["metric"], r[mode]) for r in rows.values()) / len(rows)
        for mode in ("seen", "blind")
        if all(mode in r for r in rows.values())
    }
    lines = [f"  {name:<16} {r['summary']}" for name, r in rows.items()]
    lines.append(
        "  mean over tasks (accuracy %, CIDEr x 100): "
        + ", ".join(f"{mode} {value:.2f}" for mode, value in means.items())
    )
    log.info("every task's test scores:\n%s", "\n".join(lines))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"tasks": rows, "mean": means}, indent=1) + "\n")
