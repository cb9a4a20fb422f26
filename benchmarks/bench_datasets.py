"""How long each embedded dataset takes to build from an empty cache, and how blind its questions are.

    python -m benchmarks.bench_datasets [--size default] [--seed 0] [NAME ...]

Builds each dataset into a fresh temporary cache (easy-vqa's time includes downloading its
wheel with pip), then prints a markdown table of media items per split, samples and seconds,
and a second one of blind accuracy (each test question answered with its most frequent answer
in train) next to the answer prior and the prior given the question string, per question type.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from epalm.data.embedded import EMBEDDED, build_embedded
from epalm.data.embedded.common import SPLITS, blind_accuracy
from epalm.data.manifest import read_manifest


def timed_build(name: str, size: str, seed: int) -> tuple[Path, float]:
    cache = tempfile.mkdtemp(prefix="epalm-bench-")
    start = time.perf_counter()
    root = build_embedded(name, seed=seed, size=size, cache_dir=cache)
    return root, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", default=list(EMBEDDED))
    parser.add_argument("--size", default="default")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    built = {name: timed_build(name, args.size, args.seed) for name in args.names}

    print("| dataset | media items (train / val / test) | samples | size on disk | build (s) |")
    print("|---|---|---|---|---|")
    for name, (root, seconds) in built.items():
        splits = {split: read_manifest(root / f"{split}.jsonl") for split in SPLITS}
        items = " / ".join(str(len({s.media[0] for s in splits[split]})) for split in SPLITS)
        samples = sum(map(len, splits.values()))
        disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        print(f"| {name} | {items} | {samples} | {disk / 1e6:.1f} MB | {seconds:.1f} |")

    print(
        "\n| dataset | question type | answers | test questions | blind accuracy "
        "| answer prior | prior given the question |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (root, _) in built.items():
        train, test = (read_manifest(root / f"{split}.jsonl") for split in ("train", "test"))
        for kind, row in blind_accuracy(train, test).items():
            print(
                f"| {name} | {kind} | {row['answers']} | {row['questions']} "
                f"| {row['blind']:.3f} | {row['prior']:.3f} | {row['question_prior']:.3f} |"
            )


if __name__ == "__main__":
    main()
