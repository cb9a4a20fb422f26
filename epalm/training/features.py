"""The feature cache as a job uses it: every process fills its share of the missing entries,
all wait, then each loads what its samples need."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from epalm.connectors import connector_class
from epalm.data.feature_cache import FeatureCache
from epalm.data.manifest import Sample
from epalm.encoders.base import Perceiver
from epalm.training.settings import RunSettings

log = logging.getLogger(__name__)


def features_for(
    settings: RunSettings,
    perceiver: Perceiver,
    samples: Sequence[Sample],
    accelerator: Any,
    levels: int | None = None,
    below: int | None = None,
) -> dict[str, torch.Tensor]:
    """``str(media path) -> [levels, hidden]`` for every sample (the tokens of the levels the
    connector reads, for one that reads tokens), computed where missing. ``levels``: that many
    last levels' summaries instead (a model without a connector: the dual encoder reads 1);
    ``below``: what enters that block instead (``Perceiver.block_input``), where only the
    blocks from there up train."""
    reads_tokens = (
        levels is None
        and below is None
        and connector_class(settings.connector.name).reads == "tokens"
    )
    levels = levels or settings.connector.levels_for(settings.modality)
    cache = FeatureCache(
        perceiver,
        settings.model_cache,
        video_backend=settings.data.video_backend,
        tokens=levels if reads_tokens else None,
        below=below,
    )
    paths = sorted({str(s.media_paths[0]) for s in samples})
    cache.fill(
        paths,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        batch_size=settings.eval.batch_size,
        num_workers=settings.train.num_workers,
        on_bad_sample=settings.data.on_bad_sample,
        progress=accelerator.is_local_main_process,
    )
    accelerator.wait_for_everyone()
    return cache.load(_cached(cache, paths), levels=None if reads_tokens or below else levels)


def _cached(cache: FeatureCache, paths: list[str]) -> list[str]:
    # files skipped as bad have no entry: their samples come back as errors, as from media
    missing = {str(p) for p in cache.missing(paths)}
    if missing:
        log.warning(
            "%d files have no features (bad media), their samples are skipped", len(missing)
        )
    return [p for p in paths if p not in missing]
