"""The performance suite: every benchmark in its own process, then the targets, met or missed.

    python -m benchmarks [--quick] [--out bench-results] [--only NAME ...]

Each benchmark prints its tables and writes ``<out>/<NAME>.json``. On a machine with a GPU the
suite adds eP-ALM's own scale (OPT-2.7B with ViT-B/16, bf16) to the utilisation benchmark.
``--quick`` (tiny random models, small sizes) is what CI runs; its numbers only show that the
benchmarks work, so no target is judged in it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks import SUITE
from benchmarks.common import Table

GPU_RUN = (
    "utilization-gpu",
    "utilization",
    ["--stack", "paper", "--device", "cuda", "--dtype", "bfloat16"],
)


def runs(only: Sequence[str]) -> list[tuple[str, str, list[str]]]:
    """``(result name, module, extra arguments)`` for each benchmark to run."""
    chosen = [(name, name, []) for name in SUITE if not only or name in only]
    if torch.cuda.is_available() and (not only or "utilization" in only):
        chosen.append(GPU_RUN)
    return chosen


def summary(out: Path, names: Sequence[str]) -> Table:
    table = Table("Targets", ["benchmark", "target", "measured", "met"])
    for name in names:
        path = out / f"{name}.json"
        if not path.exists():
            continue
        for t in json.loads(path.read_text())["targets"]:
            sign = "<=" if t["at_most"] else ">="
            table.add(
                name,
                f"{t['what']} {sign} {t['limit']:g}{t['unit']}",
                f"{t['measured']:.3g}{t['unit']}",
                "yes" if t["met"] else "**no**",
            )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny random models, small sizes (CI)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="where the JSON goes")
    p.add_argument("--only", nargs="+", choices=SUITE, default=[], help="run only these")
    args = p.parse_args(argv)
    failed = []
    chosen = runs(args.only)
    for name, module, extra in chosen:
        command = [
            sys.executable,
            "-m",
            f"benchmarks.{module}",
            *extra,
            "--json",
            str(args.out / f"{name}.json"),
        ]
        if args.quick:
            command.append("--quick")
        print(f"\n$ {' '.join(command[1:])}", flush=True)
        if subprocess.run(command).returncode:
            failed.append(name)
    if not args.quick:
        print("\n" + summary(args.out, [name for name, _, _ in chosen]).markdown())
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
