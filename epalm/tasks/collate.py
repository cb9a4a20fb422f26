"""Batches for training and evaluation: prompts, targets, labels and perceiver inputs.

A dataset item is ``{"sample": Sample, "inputs": {slot: tensors of one sample}}`` (from
``MediaDataset``; batched into ``"media"``), ``{"sample": Sample, "features": {slot: [levels,
hidden]}}`` (cached perceiver outputs from ``FeatureDataset``; stacked into ``"features"``;
token features ``{"tokens", "mask"}`` are padded to the batch's longest), or
``{"sample": Sample, "error": reason}`` for a sample that could not be loaded: the collator
drops it and lists it under the batch's ``"skipped"``. A batch whose items were all skipped
has no tensors (``is_empty``): the training loop skips it, e.g. ``if is_empty(batch): continue``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from epalm.data.manifest import Sample
from epalm.tasks.caption import caption_target
from epalm.tasks.vqa import training_target
from epalm.text import encode_prompts

if TYPE_CHECKING:
    from epalm.model import EPALM

log = logging.getLogger(__name__)

MODEL_KEYS = ("input_ids", "attention_mask", "labels", "media", "features")


class Collator:
    """Turns dataset items into a batch for ``EPALM.forward`` (or, with ``generation=True``,
    left-padded prompts without labels for ``EPALM.generate``).

    ``train`` picks each caption sample's target at random with ``rng`` (seeded, for repeatable
    runs; default ``random.Random(0)``), else its first caption; a question's target is its
    majority answer as written, in a form the VQA code of ``vqa_eval`` can score. Prompts are
    those of the model's ``task`` (a multi-task model's; the batch records it as ``"task"``).
    The collator keeps the model: DataLoader workers started by spawn or forkserver get a
    pickled copy each, so prefer fork (Linux) or no workers there.
    """

    def __init__(
        self,
        model: EPALM,
        *,
        train: bool,
        generation: bool = False,
        rng: random.Random | None = None,
        vqa_eval: str = "2021",
        task: str | None = None,
    ):
        self.model, self.train, self.generation = model, train, generation
        self.vqa_eval, self.task = vqa_eval, task
        self.rng = rng if rng is not None else random.Random(0)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        kept, skipped = [], []
        for item in items:
            if "error" in item:
                skipped.append((item["sample"].id, str(item["error"])))
            elif "inputs" in item or "features" in item:
                kept.append(item)
            else:
                raise ValueError(
                    f"item for {item['sample'].id!r} has no 'inputs', 'features' or 'error'"
                )
        if skipped:
            log.warning("skipped %d bad samples: %s", len(skipped), skipped)
        if not kept:
            return {"ids": [], "skipped": skipped, "task": self.task}
        samples = [item["sample"] for item in kept]
        batch = {
            **self._text(samples),
            "ids": [s.id for s in samples],
            "skipped": skipped,
            "task": self.task,
        }
        if any("inputs" in item for item in kept):
            inputs = self._slots([item.get("inputs", {}) for item in kept], samples)
            batch["media"] = {
                slot: self.model.perceivers[slot].collate(values) for slot, values in inputs.items()
            }
        if any("features" in item for item in kept):
            features = self._slots([item.get("features", {}) for item in kept], samples)
            batch["features"] = {slot: stack_features(values) for slot, values in features.items()}
        return batch

    def _text(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        questions = [s.question if s.task == "vqa" else None for s in samples]
        if self.generation:
            prompts = [self.model.prompt_for(q, self.task) for q in questions]
            return encode_prompts(self.model.tokenizer, prompts)
        targets = [self._target(s) for s in samples]
        return self.model.encode_targets(targets, questions, self.task)

    def _target(self, sample: Sample) -> str:
        if sample.task == "vqa":
            return training_target(sample.answers, self.vqa_eval)
        return caption_target(sample, self.rng if self.train else None)

    def _slots(self, per_item: list[Mapping[str, Any]], samples: list[Sample]) -> dict[str, list]:
        """``{slot: [each item's value]}``, once every item fills the same slots."""
        # The model takes each slot for the whole batch or not at all.
        slots = {tuple(sorted(i)) for i in per_item}
        if len(slots) > 1:
            raise ValueError(
                f"the samples of one batch must fill the same slots; got {sorted(slots)} "
                f"(ids {[s.id for s in samples]})"
            )
        self.model.check_slots(per_item[0])
        return {slot: [i[slot] for i in per_item] for slot in per_item[0]}


class TaskCollator:
    """A multi-task batch: its items' ``"task"`` (``TaskItems``) picks that task's collator."""

    def __init__(self, collators: Mapping[str, Collator]) -> None:
        self.collators = dict(collators)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        tasks = sorted({item["task"] for item in items})
        if len(tasks) != 1:
            raise ValueError(f"a batch must hold one task's samples; got {tasks}")
        return self.collators[tasks[0]](items)


def stack_features(values: Sequence[Any]) -> Any:
    """One batch of cached features: summaries stacked; tokens (or a block's input hidden
    states) padded to the longest (zeros, masked out) and stacked with their masks. A mask's
    last axis runs over tokens, as the second-last axis of the tensors beside it does."""
    if not isinstance(values[0], Mapping):
        return torch.stack(list(values))
    longest = max(v["mask"].shape[-1] for v in values)

    def padded(key: str, value: torch.Tensor) -> torch.Tensor:
        missing = longest - value.shape[-1 if key == "mask" else -2]
        return torch.nn.functional.pad(value, (0, missing) if key == "mask" else (0, 0, 0, missing))

    return {key: torch.stack([padded(key, v[key]) for v in values]) for key in values[0]}


def is_empty(batch: Mapping[str, Any]) -> bool:
    """True for a batch whose items were all skipped: nothing to run, only ``skipped``."""
    return not batch["ids"]


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The keys ``EPALM.forward`` / ``EPALM.generate`` take (drops ids and skipped)."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch}


def to_device(inputs: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Model inputs with every tensor (nested per slot too) moved to ``device``."""
    moved: dict[str, Any] = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            moved[key] = value.to(device)
        elif isinstance(value, Mapping):
            moved[key] = to_device(value, device)
        else:
            moved[key] = value
    return moved
