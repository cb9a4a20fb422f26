"""Training throughput per modality: the eP-ALM way against epalm's default path, side by side.

    python -m benchmarks.throughput [--batch 32] [--steps 3] [--workers 1]
        [--modalities image video audio] [--json OUT] [--quick]

Three ways to train the same connector on the same embedded samples, in one process:

- **eP-ALM way**: each step decodes and preprocesses its samples in a DataLoader, runs the
  frozen encoder, then the LM with eP-ALM's connector (10 soft-prompt tokens, whose gradient
  runs back through every LM layer) and its loss, computed from logits at every position; fp32.
- **epalm, from media**: the same decoding and encoder, but epalm's default connector (no soft
  prompt: the backward pass stops at the first injection layer) and its loss, for which the LM
  head runs only at the positions that predict a target.
- **epalm default**: as above, with the encoder's features read from a filled ``FeatureCache``
  (the fill's one-time cost is reported apart) instead of decoding and encoding.

Each path warms up on one batch; the timed steps start from a fresh DataLoader, and the cache's
include loading the features from disk. The two epalm paths start from the same weights, and
their first losses agree: the cache changes the cost, not the training.

Full mode: the embedded default stacks (``epalm train modality=M``: SmolLM2-135M; DINOv2-S at
112 px, frame by frame for video; Whisper tiny.en) on the default-size embedded datasets.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable, Sequence
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks.common import (
    MODALITIES,
    Loss,
    Report,
    Table,
    Target,
    default_stack,
    finish,
    parse,
    parser,
    target_loss,
    training_step,
)
from epalm import EPALM
from epalm.data.dataset import FeatureDataset, MediaDataset
from epalm.data.embedded import build_embedded
from epalm.data.feature_cache import FeatureCache
from epalm.data.manifest import Sample, read_manifest
from epalm.tasks import Collator, model_inputs

DATASETS = {"image": "easy-vqa", "video": "shapes-video", "audio": "sound-scenes"}
EPALM_WAY = ["connector=ep-alm"]


def full_loss(model: EPALM, inputs: dict[str, Any]) -> torch.Tensor:
    """eP-ALM's loss: the LM's own, from logits at every position."""
    return model(**inputs).loss


def pick_samples(root: Path, count: int) -> list[Sample]:
    """``count`` training samples in a fixed shuffled order (repeated if the split is small)."""
    samples = read_manifest(root / "train.jsonl")
    random.Random(0).shuffle(samples)
    return list(islice(cycle(samples), count))


def train(
    model: EPALM,
    loss_of: Loss,
    make_loader: Callable[[Sequence[Sample]], DataLoader],
    warmup: Sequence[Sample],
    timed: Sequence[Sample],
) -> tuple[float, float]:
    """``(samples/s over the timed steps, the warm-up batch's loss)``; the timed steps'
    DataLoader is made inside the timing."""
    step = training_step(model, loss_of)
    first = step(model_inputs(next(iter(make_loader(warmup)))))
    began = time.perf_counter()
    for batch in make_loader(timed):
        step(model_inputs(batch))
    return len(timed) / (time.perf_counter() - began), first


def media_loader(
    model: EPALM, batch: int, workers: int
) -> Callable[[Sequence[Sample]], DataLoader]:
    collate = Collator(model, train=False)  # the first caption as target: the same every run

    def make(part: Sequence[Sample]) -> DataLoader:
        dataset = MediaDataset(part, model.perceivers, train=False)
        return DataLoader(dataset, batch, num_workers=workers, collate_fn=collate)

    return make


def compare(modality: str, args: Any, data_dir: str | None, cache_dir: str) -> dict[str, Any]:
    root = build_embedded(
        DATASETS[modality], size="tiny" if args.quick else "default", cache_dir=data_dir
    )
    samples = pick_samples(root, args.batch * (args.steps + 1))
    warmup, timed = samples[: args.batch], samples[args.batch :]

    epalm_way = default_stack(modality, args.quick, EPALM_WAY)
    paper_rate, _ = train(
        epalm_way, full_loss, media_loader(epalm_way, args.batch, args.workers), warmup, timed
    )
    del epalm_way

    model = default_stack(modality, args.quick)
    start = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    paths = sorted({str(s.media_paths[0]) for s in samples})
    cache = FeatureCache(model.perceivers[modality], cache_dir)
    began = time.perf_counter()
    cache.fill(paths, batch_size=args.batch, num_workers=args.workers, progress=False)
    fill_seconds = time.perf_counter() - began

    def from_cache(part: Sequence[Sample]) -> DataLoader:
        features = cache.load({str(s.media_paths[0]) for s in part})  # timed: read from disk
        dataset = FeatureDataset(part, {modality: features})
        return DataLoader(dataset, args.batch, collate_fn=Collator(model, train=False))

    media_rate, media_loss = train(
        model, target_loss, media_loader(model, args.batch, args.workers), warmup, timed
    )
    model.load_state_dict(start, strict=False)
    cache_rate, cache_loss = train(model, target_loss, from_cache, warmup, timed)
    return {
        "dataset": DATASETS[modality],
        "files": len(paths),
        "fill_seconds": fill_seconds,
        "epalm_way_samples_per_s": paper_rate,
        "media_samples_per_s": media_rate,
        "cache_samples_per_s": cache_rate,
        "speedup": cache_rate / paper_rate,
        "cache_speedup": cache_rate / media_rate,
        "first_loss_media": media_loss,
        "first_loss_cache": cache_loss,
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, help="default 32 (quick: 4)")
    p.add_argument("--steps", type=int, help="timed steps; default 3 (quick: 2)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader decoding processes")
    p.add_argument("--modalities", nargs="+", choices=MODALITIES, default=list(MODALITIES))
    args = parse(p, argv)
    args.batch = args.batch or (4 if args.quick else 32)
    args.steps = args.steps or (2 if args.quick else 3)

    with tempfile.TemporaryDirectory(prefix="epalm-bench-") as scratch:
        data_dir = scratch if args.quick else None  # full mode: the usual dataset cache
        results = {m: compare(m, args, data_dir, scratch) for m in args.modalities}

    report = Report("Training throughput")
    table = Table(
        f"Samples/s, batch {args.batch}, {args.steps} timed steps, {args.workers} decoding "
        "worker(s)",
        [
            "modality",
            "dataset",
            "eP-ALM way",
            "epalm, from media",
            "epalm default (cache)",
            "speed-up",
            "of which the cache",
            "cache fill, once (files, s)",
            "first loss media / cache",
        ],
    )
    for modality, r in results.items():
        table.add(
            modality,
            r["dataset"],
            r["epalm_way_samples_per_s"],
            r["media_samples_per_s"],
            r["cache_samples_per_s"],
            f"{r['speedup']:.1f}x",
            f"{r['cache_speedup']:.1f}x",
            f"{r['files']}, {r['fill_seconds']:.1f}",
            f"{r['first_loss_media']:.4f} / {r['first_loss_cache']:.4f}",
        )
    report.tables.append(table)
    report.results = results
    if "video" in results and not args.quick:
        report.targets.append(
            Target("video: default path vs the eP-ALM way", results["video"]["speedup"], 5, "x")
        )
    finish(report, args)


if __name__ == "__main__":
    main()
