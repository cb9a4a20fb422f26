"""Is what the scenes questions ask in the frozen image features? A linear probe says.

    python -m benchmarks.probe_scenes [--steps 300]

For every scenes image (the image VQA main job's encoder: DINOv2-S at 112 px, from the feature
cache), a logistic regression on the last level's [CLS], mean and max of the patch tokens is
trained on the train split's scenes to say which colours, which shapes and which colour-shape
pairs the scene holds, and scored on the test split's. Beside each accuracy, the score of always
answering "absent": a probe far above it means the features hold the fact, so a connector that
fails the questions fails to hand it on, not to see it.
"""

from __future__ import annotations

import argparse
import json

import torch
from accelerate import Accelerator

from epalm.data.embedded.scenes import COLORS, SHAPES
from epalm.encoders import build_perceiver
from epalm.training.compose import settings
from epalm.training.data import data_root, load_split
from epalm.training.features import features_for
from epalm.zoo.cache import using_cache


def scenes(run, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The split's pooled features ``[images, 3 x dim]`` and its facts per image."""
    root = data_root(run)
    rows = [json.loads(line) for line in (root / run.data.splits[split]).open()]
    rows = [r for r in rows if "objects" in r]  # the caption samples: one per image
    with using_cache(run.model_cache):
        perceiver = build_perceiver(run.encoder.name, **run.encoder.kwargs)
    samples = {str(s.media_paths[0]): s for s in load_split(run, split)}
    features = features_for(run, perceiver, list(samples.values()), Accelerator(cpu=True))
    tokens = torch.stack([features[str(root / r["media"])]["tokens"][-1].float() for r in rows])
    pooled = torch.cat([tokens[:, 0], tokens[:, 1:].mean(1), tokens[:, 1:].amax(1)], dim=1)

    def holds(values, test) -> torch.Tensor:
        return torch.tensor(
            [[any(test(o, v) for o in r["objects"]) for v in values] for r in rows]
        ).float()

    pairs = [(c, s) for c in COLORS for s in SHAPES]
    return pooled, {
        "colour": holds(COLORS, lambda o, c: o["color"] == c),
        "shape": holds(SHAPES, lambda o, s: o["shape"] == s),
        "colour-shape pair": holds(pairs, lambda o, cs: (o["color"], o["shape"]) == cs),
    }


def probe(
    train: torch.Tensor, test: torch.Tensor, y: torch.Tensor, test_y: torch.Tensor, steps: int
) -> float:
    """Test accuracy (over images and values) of a logistic regression fitted on standardised
    ``train``."""
    mean, std = train.mean(0), train.std(0) + 1e-5
    train, test = (train - mean) / std, (test - mean) / std
    linear = torch.nn.Linear(train.shape[1], y.shape[1])
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(linear(train), y).backward()
        optimizer.step()
    with torch.no_grad():
        return (linear(test).gt(0).float() == test_y).float().mean().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.manual_seed(0)
    run, _ = settings(["modality=image", "task=vqa", "data=scenes", "connector=token-learner"])
    x_train, y_train = scenes(run, "train")
    x_test, y_test = scenes(run, "test")
    print("| fact | test images | probe accuracy | always 'absent' |")
    print("|---|---|---|---|")
    for fact, y in y_train.items():
        accuracy = probe(x_train, x_test, y, y_test[fact], args.steps)
        absent = 1 - y_test[fact].mean()
        print(f"| {fact} | {len(x_test)} | {accuracy:.3f} | {absent:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
