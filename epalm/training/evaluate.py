"""Scoring a model on a split: generate for every sample, clean the text, apply the task's
metrics, and do it again blind (perception removed) to show how much the model uses it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from epalm.atomic import atomic_write_text
from epalm.data.manifest import Sample
from epalm.tasks.caption import clean_caption
from epalm.tasks.cococaption import caption_scores
from epalm.tasks.collate import Collator, is_empty, model_inputs, to_device
from epalm.tasks.vqa import clean_answer, unanswerable_note, unanswerable_questions, vqa_scores
from epalm.training.data import batches, subset
from epalm.training.sanity import generation_health, sanity_warnings
from epalm.training.settings import GenerationSettings, RunSettings

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_samples(
    model: Any,
    dataset: Any,
    *,
    task: str,
    generation: GenerationSettings,
    batch_size: int,
    blind: bool = False,
    num_workers: int = 0,
    desc: str = "evaluating",
    task_id: str | None = None,
) -> dict[str, str]:
    """``{sample id: cleaned text}`` for every sample of ``dataset`` (bad ones are skipped and
    logged by the collator, then count as missing in the scores), as the model's task
    ``task_id`` (a multi-task model's: its prompt and adapters)."""
    model.eval()
    collate = Collator(model, train=False, generation=True, task=task_id)
    loader = batches(dataset, collate, batch_size=batch_size, num_workers=num_workers)
    clean = clean_answer if task == "vqa" else clean_caption
    predictions = {}
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        if is_empty(batch):
            continue
        inputs = model_inputs(batch)
        if blind:
            inputs.pop("media", None)
            inputs.pop("features", None)
        with model.using_task(task_id):
            new = model.generate(
                **to_device(inputs, model.device),
                num_beams=generation.num_beams,
                max_new_tokens=generation.max_new_tokens,
            )
        texts = model.tokenizer.batch_decode(new, skip_special_tokens=True)
        predictions.update({i: clean(t) for i, t in zip(batch["ids"], texts)})
    return predictions


def score(
    task: str, predictions: Mapping[str, str], samples: Sequence[Sample], vqa_eval: str = "2017"
) -> dict[str, Any]:
    """The task's metrics: VQA accuracy by the official code of ``vqa_eval`` (+ per question
    type where samples have one), or the COCO caption metrics."""
    if task == "vqa":
        scores = vqa_scores(predictions, samples, vqa_eval)
        by_type = _by_question_type(predictions, samples, vqa_eval)
        if by_type:
            scores["by_question_type"] = by_type
        return scores
    references = {s.id: s.captions for s in samples}
    scores = caption_scores(predictions, references)
    scores.pop("per_sample", None)
    return scores


def evaluate(
    model: Any,
    samples: Sequence[Sample],
    dataset_for: Callable[[Sequence[Sample]], Any],
    settings: RunSettings,
    *,
    out_dir: str | Path | None = None,
    num_workers: int = 0,
    sources: Mapping[str, Any] | None = None,
    task_id: str | None = None,
) -> dict[str, Any]:
    """Scores with perception (``"seen"``) and, if ``eval.blind``, without (``"blind"``, on a
    fixed random subset of ``eval.blind_samples`` when set); ``dataset_for(samples)`` makes the
    dataset. With ``out_dir``, predictions and scores are written there; ``sources`` (which
    file each split came from, ``split_sources``) goes into them as ``splits``. ``task_id``: the
    multi-task model's task that ``settings`` is the job of."""
    task, options = settings.task.name, settings.eval
    report: dict[str, Any] = {"count": len(samples)}
    if sources is not None:
        report["splits"] = dict(sources)
    runs = {"seen": list(samples)}
    if options.blind:
        runs["blind"] = subset(samples, options.blind_samples, settings.seed)
        report["blind_count"] = len(runs["blind"])
    for mode, chosen in runs.items():
        predictions = predict_samples(
            model,
            dataset_for(chosen),
            task=task,
            generation=options.generation,
            batch_size=options.batch_size,
            blind=mode == "blind",
            num_workers=num_workers,
            desc=f"evaluating ({mode})",
            task_id=task_id,
        )
        report[mode] = score(task, predictions, chosen, settings.task.vqa_eval)
        report[mode]["generations"] = generation_health(predictions)
        if out_dir is not None:
            _write_json(Path(out_dir) / f"predictions-{mode}.json", predictions)
    if task == "vqa":
        report.update(_answerability(samples, settings))
    numbers = headline(task, report)
    report["warnings"] = sanity_warnings(
        numbers["seen"], numbers.get("blind"), report["seen"]["generations"]
    )
    if out_dir is not None:
        _write_json(Path(out_dir) / "scores.json", report)
    return report


def _answerability(samples: Sequence[Sample], settings: RunSettings) -> dict[str, Any]:
    """The VQA code used, and how many questions no prediction could answer under it."""
    version = settings.task.vqa_eval
    lost = unanswerable_questions(samples, version)
    if lost:
        log.warning(unanswerable_note(lost, len(samples), version, settings.eval.split))
    return {"vqa_eval": version, "unanswerable": len(lost), "unanswerable_ids": lost[:20]}


def headline(task: str, report: Mapping[str, Any]) -> dict[str, float]:
    """The main number per mode: VQA accuracy, or CIDEr."""
    key = "vqa_accuracy" if task == "vqa" else "CIDEr"
    return {mode: report[mode]["metrics"][key] for mode in ("seen", "blind") if mode in report}


# Papers report accuracy in percent and CIDEr x 100 (VL-Adapter's average over tasks too)
REPORTED_SCALE = {"vqa_accuracy": 100.0, "CIDEr": 100.0}


def reported(metric: str, value: float) -> float:
    """``value`` of ``metric`` in the units papers report."""
    return value * REPORTED_SCALE.get(metric, 1.0)


def selection_score(values: Mapping[str, tuple[str, float]]) -> tuple[str, float]:
    """What picks the best checkpoint from each task's ``(metric, value)``: one task's metric,
    or a multi-task run's mean over tasks in reported units (accuracy %, CIDEr x 100)."""
    if len(values) == 1:
        return next(iter(values.values()))
    mean = sum(reported(m, v) for m, v in values.values()) / len(values)
    return "mean over tasks", mean


def summary_line(settings: RunSettings, report: Mapping[str, Any]) -> str:
    """The run's result in one line; a loud one when the result is no result (``warnings``)."""
    numbers = headline(settings.task.name, report)
    metric = "CIDEr"
    if settings.task.name == "vqa":
        metric = f"VQA accuracy ({settings.task.vqa_eval} official code)"
    parts = [f"{settings.eval.split} {metric}: {numbers['seen']:.4f}"]
    if "blind" in numbers:
        parts.append(f"blind {numbers['blind']:.4f}")
    line = f"{', '.join(parts)} ({report['count']} samples"
    if report.get("unanswerable"):
        line += f", {report['unanswerable']} unanswerable under this code"
    line += ")"
    if report.get("warnings"):
        line += " -- WARNING, NOT A RESULT: " + "; ".join(report["warnings"])
    return line


def log_summary(settings: RunSettings, report: Mapping[str, Any], label: str = "") -> str:
    """Log the summary line (as a warning when the result is no result), after ``label`` (a
    multi-task model's task), and return it."""
    line = summary_line(settings, report)
    level = logging.WARNING if report.get("warnings") else logging.INFO
    log.log(level, "%s%s", f"{label}: " if label else "", line)
    return line


def _by_question_type(
    predictions: Mapping[str, str], samples: Sequence[Sample], vqa_eval: str
) -> dict[str, float]:
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        if "question_type" in s.extra:
            groups.setdefault(s.extra["question_type"], []).append(s)
    return {
        kind: vqa_scores(
            {s.id: predictions[s.id] for s in group if s.id in predictions}, group, vqa_eval
        )["metrics"]["vqa_accuracy"]
        for kind, group in sorted(groups.items())
    }


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
