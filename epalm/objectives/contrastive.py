"""``contrastive``: a dual encoder (LilT) learns to place matching media and captions close.
Its loss is the symmetric InfoNCE with every process's negatives, summed over pairs; it is
scored by retrieval recalls both ways, beside the same embeddings on shuffled pairs (the
control that plays the part of a blind score), and zero-shot classification where the data
have labels."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from epalm.atomic import atomic_write_text
from epalm.data.manifest import Sample
from epalm.objectives.base import Objective, register_objective
from epalm.retrieval.contrastive import contrastive_sum
from epalm.retrieval.dual_encoder import DualEncoder, DualEncoderConfig
from epalm.retrieval.index import RetrievalIndex
from epalm.retrieval.search import GalleryIndexes
from epalm.tasks.collate import is_empty, stack_features, to_device
from epalm.tasks.retrieval import (
    Gallery,
    build_gallery,
    retrieval_scores,
    shuffled_scores,
    zero_shot_accuracy,
)
from epalm.training.data import batches
from epalm.training.settings import RunSettings
from epalm.training.task_data import TaskData

log = logging.getLogger(__name__)
METRIC = "mean_recall"


class ContrastiveLoss(nn.Module):
    """The dual encoder's summed contrastive loss as a module's forward, so DDP can wrap it."""

    def __init__(self, model: DualEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        media: Mapping[str, Any] | None = None,
        features: Mapping[str, torch.Tensor] | None = None,
        task: str | None = None,
    ) -> tuple[torch.Tensor, int]:
        items = _embed_media(self.model, media, features)
        texts = self.model.embed_text(input_ids, attention_mask)
        summed, _ = contrastive_sum(items, texts, self.model.temperature())
        return summed, items.shape[0]


class PairCollator:
    """Dataset items -> ``{"ids", "skipped", "task", "media" | "features"}`` and, with
    ``text``, each sample's first caption tokenized by the text tower."""

    def __init__(self, model: DualEncoder, text: bool = True) -> None:
        self.model, self.text = model, text

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        skipped = [(i["sample"].id, str(i["error"])) for i in items if "error" in i]
        kept = [i for i in items if "error" not in i]
        if skipped:
            log.warning("skipped %d bad samples: %s", len(skipped), skipped)
        batch: dict[str, Any] = {"ids": [i["sample"].id for i in kept], "skipped": skipped}
        batch["task"] = None
        if not kept:
            return batch
        slot = self.model.config.modality
        if "inputs" in kept[0]:
            batch["media"] = {slot: self.model.perceiver.collate([i["inputs"][slot] for i in kept])}
        else:
            batch["features"] = {slot: stack_features([i["features"][slot] for i in kept])}
        if self.text:
            batch.update(self.model.text.tokenize([i["sample"].captions[0] for i in kept]))
        return batch


@register_objective("contrastive")
class Contrastive(Objective):
    def build_model(self, settings: RunSettings) -> DualEncoder:
        retrieval = settings.retrieval
        return DualEncoder(
            DualEncoderConfig(
                perceiver=settings.encoder,
                modality=settings.modality,
                text=dict(retrieval.text_encoder),
                embed_dim=retrieval.embed_dim,
                temperature=retrieval.temperature,
                max_scale=retrieval.max_scale,
                align=settings.align.name,
                align_kwargs=dict(settings.align.kwargs),
                seed=settings.seed,
            )
        )

    def load_model(self, directory: Path) -> DualEncoder:
        return DualEncoder.from_pretrained(directory)

    def loss_module(self, model: DualEncoder) -> nn.Module:
        return ContrastiveLoss(model)

    def count(self, model: DualEncoder, batch: dict[str, Any]) -> int:
        return len(batch["ids"])

    def collator(self, model: DualEncoder, task: TaskData) -> Callable:
        return PairCollator(model)

    def validate(self, model: DualEncoder, task: TaskData) -> dict[str, float]:
        ks = task.run.retrieval.recall_at
        gallery, items, texts = embed_gallery(model, task, task.val, "validating")
        return retrieval_scores(items, texts, gallery, ks)

    def evaluate(
        self,
        model: DualEncoder,
        tasks: list[TaskData],
        out_root: Path,
        checkpoint: Path | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Each task's report; with ``checkpoint``, its gallery's search indexes are saved
        beside it too (``index_dir``), for ``epalm retrieve`` and the demo."""
        rows = {}
        for task in tasks:
            run = task.run
            out_dir = (out_root / task.name if task.model_task else out_root) / run.eval.split
            gallery, items, texts = embed_gallery(model, task, task.test, "evaluating")
            report = retrieval_report(task, gallery, items, texts)
            if checkpoint is not None:
                save_indexes(index_dir(checkpoint, run), gallery, items, texts, run.retrieve.index)
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_dir / "scores.json", json.dumps(report, indent=1) + "\n")
            line = _summary(run, report)
            log.log(logging.WARNING if report["warnings"] else logging.INFO, "%s", line)
            rows[task.name] = {
                "metric": METRIC,
                "split": run.eval.split,
                "seen": report["seen"][METRIC],
                "blind": report["shuffled"][METRIC],
                "summary": line,
            }
        return rows

    reads_block_inputs = True

    def feature_levels(self) -> int:
        return 1  # the last level's summary: what the media head reads

    def describe(self, model: DualEncoder) -> str:
        config = model.config
        return (
            f"a dual encoder: {config.modality} tower {config.perceiver.name}, text tower "
            f"{model.text.config()['model'] or 'from model_config'} ({model.text.pooling}-pooled), "
            f"a {config.embed_dim}-wide shared space, align={config.align}"
        )


@torch.no_grad()
def embed_gallery(
    model: DualEncoder, task: TaskData, samples: Sequence[Sample], desc: str
) -> tuple[Gallery, torch.Tensor, torch.Tensor]:
    """The gallery of ``samples`` and its items' and captions' embeddings (items whose media
    could not be read are left out of the gallery, and the collator names them)."""
    model.eval()
    gallery = build_gallery(samples)
    loader = batches(
        task.dataset(gallery.items, train=False),
        PairCollator(model, text=False),
        batch_size=task.run.eval.batch_size,
        num_workers=task.num_workers,
    )
    embedded: dict[str, torch.Tensor] = {}
    for batch in tqdm(loader, desc=f"{desc} (media)", unit="batch", leave=False):
        if not is_empty(batch):
            inputs = to_device(
                {k: batch[k] for k in ("media", "features") if k in batch}, model.device
            )
            vectors = _embed_media(model, inputs.get("media"), inputs.get("features")).cpu()
            embedded.update(zip(batch["ids"], vectors))
    if len(embedded) < len(gallery):
        keep = [i for i, item in enumerate(gallery.items) if item.id in embedded]
        gallery = build_gallery([gallery.items[i] for i in keep])
    items = torch.stack([embedded[item.id] for item in gallery.items])
    batch_size = task.run.eval.batch_size
    texts = torch.cat(
        [
            model.encode_text(gallery.captions[start : start + batch_size]).cpu()
            for start in tqdm(
                range(0, len(gallery.captions), batch_size),
                desc=f"{desc} (text)",
                unit="batch",
                leave=False,
            )
        ]
    )
    return gallery, items, texts


def index_dir(checkpoint: Path, run: RunSettings) -> Path:
    """Where a checkpoint keeps the search indexes of ``run``'s evaluation gallery."""
    return checkpoint / "index" / f"{run.data.name}-{run.eval.split}"


def save_indexes(
    directory: Path, gallery: Gallery, items: torch.Tensor, texts: torch.Tensor, kind: str
) -> GalleryIndexes:
    """The gallery's media (keyed by path) and captions, indexed and saved in ``directory``."""
    paths = [str(item.media_paths[0]) for item in gallery.items]
    indexes = GalleryIndexes(
        RetrievalIndex(items, paths, kind=kind),
        RetrievalIndex(texts, gallery.captions, kind=kind),
        dict(zip(paths, gallery.item_captions)),
    )
    indexes.save(directory)
    log.info(
        "indexed %d media and %d captions (%s): %s",
        len(paths),
        len(texts),
        indexes.media.kind,
        directory,
    )
    return indexes


def retrieval_report(
    task: TaskData, gallery: Gallery, items: torch.Tensor, texts: torch.Tensor
) -> dict[str, Any]:
    """Recalls on the evaluation gallery, the same on shuffled pairs, and zero-shot accuracy
    where ``retrieval.zero_shot_label`` names the items' labels; ``warnings`` when the recalls
    are no better than shuffled pairs."""
    run = task.run
    ks = run.retrieval.recall_at
    report: dict[str, Any] = {"items": len(gallery), "captions": len(gallery.captions)}
    report["seen"] = retrieval_scores(items, texts, gallery, ks)
    report["shuffled"] = shuffled_scores(items, texts, gallery, ks, seed=run.seed)
    if run.retrieval.zero_shot_label:
        report["zero_shot"] = _zero_shot(task.model, gallery, items, run)
    seen, shuffled = report["seen"][METRIC], report["shuffled"][METRIC]
    report["warnings"] = (
        [f"mean recall {seen:.1f} is no better than on shuffled pairs ({shuffled:.1f})"]
        if seen < 2 * shuffled
        else []
    )
    return report


def _zero_shot(
    model: DualEncoder, gallery: Gallery, items: torch.Tensor, run: RunSettings
) -> dict[str, Any]:
    key = run.retrieval.zero_shot_label
    labels = [str(_dotted(item.extra, key, item)) for item in gallery.items]
    classes = sorted(set(labels))
    prompts = [run.retrieval.zero_shot_prompt.format(label=label) for label in classes]
    result = zero_shot_accuracy(items, labels, classes, model.encode_text(prompts).cpu())
    return {**result, "label": key, "prompt": run.retrieval.zero_shot_prompt}


def _dotted(data: Mapping[str, Any], key: str, sample: Sample) -> Any:
    value: Any = data
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise ValueError(
                f"retrieval.zero_shot_label={key}: sample {sample.id!r} has no {key!r} "
                f"(its manifest entry's extra keys: {sorted(data)})"
            )
        value = value[part]
    return value


def _embed_media(
    model: DualEncoder,
    media: Mapping[str, Any] | None,
    features: Mapping[str, torch.Tensor] | None,
) -> torch.Tensor:
    slot = model.config.modality
    if features is not None:
        return model.embed_media(features=features[slot])
    return model.embed_media(media[slot])


def _summary(run: RunSettings, report: Mapping[str, Any]) -> str:
    seen, shuffled, k = report["seen"], report["shuffled"], run.retrieval.recall_at[0]
    line = (
        f"{run.eval.split} mean recall {seen[METRIC]:.2f} (R@{k} text->media "
        f"{seen[f'text_to_media_r@{k}']:.1f}, media->text {seen[f'media_to_text_r@{k}']:.1f}); "
        f"shuffled pairs {shuffled[METRIC]:.2f} ({report['items']} items, "
        f"{report['captions']} captions)"
    )
    if "zero_shot" in report:
        zero = report["zero_shot"]
        line += f"; zero-shot {zero['label']} {zero['accuracy']:.1f}% (majority {zero['majority']:.1f}%)"
    for warning in report["warnings"]:
        line += f"\nWARNING: {warning}"
    return line
