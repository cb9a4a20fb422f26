"""Training-step time of the embedded default model, and the image perceiver's throughput.

    python benchmarks/bench_train_step.py [--batch 32] [--steps 4]

SmolLM2-135M with DINOv2-S features (random, as from a feature cache), on an easy-VQA-like
batch; with eP-ALM's 10-token soft prompt the backward pass runs through every LM layer,
without it the backward pass stops at the first injection layer.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from epalm import EPALM, EPALMConfig
from epalm.config import ConnectorConfig
from epalm.encoders import build_perceiver
from epalm.presets import encoder_preset, lm_preset


def step_seconds(prompt_tokens: int, batch: int, steps: int) -> float:
    _, image = encoder_preset("dinov2-small")
    connector = ConnectorConfig(prompt_tokens=prompt_tokens)
    model = EPALM(
        EPALMConfig(lm=lm_preset("smollm2-135m"), perceivers={"image": image}, connector=connector)
    )
    model.train()
    texts = model.encode_targets(["blue"] * batch, questions=["what color is the shape?"] * batch)
    features = {"image": torch.randn(batch, 12, 384)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        model(**texts, features=features).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def images_per_second(size: int, count: int = 64) -> float:
    perceiver = build_perceiver("image", model="dinov2-small", image_size=size)
    images = [
        np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(count)
    ]
    start = time.perf_counter()
    perceiver.encode(images)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"| soft prompt tokens | seconds per step (batch {args.batch}) |")
    print("|---|---|")
    for prompt_tokens in (10, 0):
        print(f"| {prompt_tokens} | {step_seconds(prompt_tokens, args.batch, args.steps):.2f} |")
    print("\n| DINOv2-S input size | images per second |")
    print("|---|---|")
    for size in (224, 112):
        print(f"| {size} px | {images_per_second(size):.1f} |")


if __name__ == "__main__":
    main()
