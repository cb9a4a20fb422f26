"""Training throughput from media versus from the feature cache, per modality, side by side.

    python benchmarks/bench_cache_throughput.py [--batch 32] [--steps 4] [--workers 1]
        [--modalities image video audio] [--json OUT] [--quick]

From media, each step decodes and preprocesses its samples in a DataLoader (``--workers``
processes), runs the frozen encoder, then the LM forward and backward pass and an AdamW step on
the connector. From the cache, each step takes the encoder's features from a ``FeatureCache``
(filled beforehand; the fill's one-time cost is reported apart) and runs the same LM step. Both
use the same samples, batch size, starting weights and evaluation preprocessing; the first
batch's loss is printed for each, and they agree. Each run warms up on one batch first; the
timed steps start from a fresh DataLoader, and the cache's timed steps include loading the
features they use from disk.

Full mode: the embedded default models (SmolLM2-135M; DINOv2-S at 112 px for easy-VQA's 64 px
images and, frame by frame, for shapes-video; Whisper tiny.en for sound-scenes), connector
``levels=4, prompt_tokens=0``, default-size datasets. ``--quick``: tiny random models and the
tiny datasets in a temporary directory, in well under a minute (CI runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from epalm import EPALM, EPALMConfig
from epalm.config import ConnectorConfig
from epalm.data.dataset import FeatureDataset, MediaDataset
from epalm.data.embedded import build_embedded
from epalm.data.feature_cache import FeatureCache
from epalm.data.manifest import Sample, read_manifest
from epalm.presets import encoder_preset, lm_preset
from epalm.tasks import Collator, model_inputs
from epalm.testing import tiny_model

# modality -> (embedded dataset, encoder preset, perceiver kwargs to override)
SETUPS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "image": ("easy-vqa", "dinov2-small", {"image_size": 112}),
    "video": (
        "shapes-video",
        "dinov2-small-frames",
        {"image": {"name": "image", "model": "dinov2-small", "image_size": 112}},
    ),
    "audio": ("sound-scenes", "whisper-tiny.en", {}),
}


def build_model(modality: str, quick: bool) -> EPALM:
    if quick:
        return tiny_model(modalities=[modality], prompt_tokens=0)
    _, perceiver = encoder_preset(SETUPS[modality][1])
    perceiver = replace(perceiver, kwargs={**perceiver.kwargs, **SETUPS[modality][2]})
    config = EPALMConfig(
        lm=lm_preset("smollm2-135m"),
        perceivers={modality: perceiver},
        connector=ConnectorConfig(levels=4, prompt_tokens=0),
    )
    return EPALM(config)


def pick_samples(root: Path, count: int) -> list[Sample]:
    """``count`` training samples in a fixed shuffled order (repeated if the split is small)."""
    samples = read_manifest(root / "train.jsonl")
    random.Random(0).shuffle(samples)
    return list(islice(cycle(samples), count))


def train(
    model: EPALM,
    start: dict[str, torch.Tensor],
    make_loader: Callable[[Sequence[Sample]], DataLoader],
    warmup: Sequence[Sample],
    timed: Sequence[Sample],
) -> tuple[float, float]:
    """``(seconds for the timed steps, the warm-up batch's loss)``, from the ``start`` weights;
    the timed steps' DataLoader is made inside the timing."""
    model.load_state_dict(start, strict=False)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.02)

    def step(batch: dict[str, Any]) -> float:
        loss = model(**model_inputs(batch)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    first = step(next(iter(make_loader(warmup))))  # one batch
    began = time.perf_counter()
    for batch in make_loader(timed):
        step(batch)
    return time.perf_counter() - began, first


def compare(modality: str, args: argparse.Namespace, data_dir: str | None, cache_dir: str) -> dict:
    """One modality: fill the cache, then train from media and from the cache."""
    root = build_embedded(
        SETUPS[modality][0], size="tiny" if args.quick else "default", cache_dir=data_dir
    )
    torch.manual_seed(0)
    model = build_model(modality, args.quick)
    perceiver = model.perceivers[modality]
    samples = pick_samples(root, args.batch * (args.steps + 1))
    warmup, timed = samples[: args.batch], samples[args.batch :]
    paths = sorted({str(s.media_paths[0]) for s in samples})

    cache = FeatureCache(perceiver, cache_dir)
    began = time.perf_counter()
    cache.fill(paths, batch_size=args.batch, num_workers=args.workers, progress=False)
    fill_seconds = time.perf_counter() - began

    collate = Collator(model, train=False)  # the first caption as target: the same in both runs
    start = {k: v.clone() for k, v in model.trainable_state_dict().items()}

    def from_media(part: Sequence[Sample]) -> DataLoader:
        dataset = MediaDataset(part, model.perceivers, train=False)
        return DataLoader(dataset, args.batch, num_workers=args.workers, collate_fn=collate)

    def from_cache(part: Sequence[Sample]) -> DataLoader:
        features = cache.load({str(s.media_paths[0]) for s in part})  # timed: read from disk
        return DataLoader(
            FeatureDataset(part, {modality: features}), args.batch, collate_fn=collate
        )

    media_seconds, media_loss = train(model, start, from_media, warmup, timed)
    cache_seconds, cache_loss = train(model, start, from_cache, warmup, timed)
    media_rate, cache_rate = len(timed) / media_seconds, len(timed) / cache_seconds
    return {
        "dataset": SETUPS[modality][0],
        "encoder": "tiny random" if args.quick else SETUPS[modality][1],
        "files": len(paths),
        "fill_seconds": fill_seconds,
        "media_samples_per_s": media_rate,
        "cache_samples_per_s": cache_rate,
        "ratio": cache_rate / media_rate,
        "first_loss_media": media_loss,
        "first_loss_cache": cache_loss,
    }


def report(results: dict[str, dict], args: argparse.Namespace) -> None:
    print(
        f"\nbatch {args.batch}, {args.steps} timed steps, {args.workers} DataLoader workers, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(
        "| modality | dataset | encoder | from media (samples/s) | from cache (samples/s) "
        "| speed-up | cache fill (files, s) | first loss media / cache |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for modality, r in results.items():
        print(
            f"| {modality} | {r['dataset']} | {r['encoder']} | {r['media_samples_per_s']:.1f} "
            f"| {r['cache_samples_per_s']:.1f} | {r['ratio']:.1f}x "
            f"| {r['files']}, {r['fill_seconds']:.1f} "
            f"| {r['first_loss_media']:.4f} / {r['first_loss_cache']:.4f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=None, help="default 32 (quick: 4)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps; default 4 (quick: 2)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader decoding processes")
    parser.add_argument("--modalities", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny random models and datasets")
    args = parser.parse_args()
    args.batch = args.batch or (4 if args.quick else 32)
    args.steps = args.steps or (2 if args.quick else 4)

    with tempfile.TemporaryDirectory(prefix="epalm-bench-") as scratch:
        data_dir = scratch if args.quick else None  # full mode: the usual dataset cache
        results = {m: compare(m, args, data_dir, scratch) for m in args.modalities}
    report(results, args)
    if args.json:
        machine = {"platform": platform.platform(), "cpus": os.cpu_count()}
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        payload = {"settings": settings, "machine": machine, "results": results}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
