"""The six main jobs, each from an empty cache, timed: the README's results table.

    python -m benchmarks.main_jobs [--out main_jobs] [--jobs image-vqa video-caption ...]
        [--variant faithful=true ...] [--variants-only] [--cache DIR]

Each job runs `epalm train modality=M task=T` in a fresh process with its own empty
``EPALM_CACHE``, so its wall time includes fetching and converting the offline models, building
the dataset and filling the feature cache; its peak memory is the training process's own
maximum resident set. Prints a markdown table and writes
``<out>/main_jobs.json``; the run directories are ``<out>/<modality>-<task>``. Each
``--variant`` (overrides, space-separated) runs every job once more with them, in the same
invocation, so the rows compare on one machine; ``--variants-only`` leaves out the rows without
overrides. ``--cache DIR`` runs every job on that one cache instead (models, datasets and
features already there are reused), so the wall times leave out what the cache held.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

JOBS = [f"{m}-{t}" for m in ("image", "video", "audio") for t in ("vqa", "caption")]
TARGETS = {"vqa": "VQA accuracy", "caption": "CIDEr", "retrieval": "mean recall"}


def run_job(job: str, out: Path, variant: str = "", cache: Path | None = None) -> dict:
    modality, task = job.split("-")
    overrides = variant.split()
    name = "+".join([job, *(o.replace("=", "-") for o in overrides)])
    run_dir, cache = out / name, cache or out / f"cache-{name}"
    env = {**os.environ, "EPALM_CACHE": str(cache)}
    command = ["epalm", "train", f"modality={modality}", f"task={task}", *overrides]
    command.append(f"run_dir={run_dir}")
    job = " ".join([job, *overrides])
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this job's own peak memory
        process.returncode = code = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    peak_gb = usage.ru_maxrss * 1024 / 1e9  # Linux reports kilobytes
    if code != 0:
        return {"job": job, "error": f"exit {code}, see {out / f'{name}.log'}", "seconds": seconds}
    scores = json.loads((run_dir / "eval" / "test" / "scores.json").read_text())
    return {
        "job": job,
        "command": " ".join(command[:-1]),
        "metric": TARGETS[task],
        **_headline(task, scores),
        "seconds": seconds,
        "peak_gb": peak_gb,
        "trainable": _logged(run_dir / "train.log", "trainable parameters:"),
        "seconds_per_step": _seconds_per_step(run_dir / "train.log"),
        "by_question_type": scores["seen"].get("by_question_type", {}),
        "warnings": scores.get("warnings", []),
    }


def shared_cache(out: str, cache: Path | None) -> tuple[Path, Path]:
    """The output folder (made) and the one cache every job of a side-by-side benchmark shares
    (default ``<out>/cache``); ``EPALM_CACHE`` points there for what the benchmark loads itself."""
    folder = Path(out).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    shared = (cache or folder / "cache").resolve()
    os.environ["EPALM_CACHE"] = str(shared)
    return folder, shared


def finished_rows(path: Path) -> list[dict]:
    """The rows a killed benchmark wrote to ``path`` without an error: run again with the same
    ``--out``, it goes on after them."""
    return [r for r in json.loads(path.read_text()) if "error" not in r] if path.exists() else []


def _headline(task: str, scores: dict) -> dict:
    """The score and its control (blind, or shuffled pairs for retrieval) from scores.json."""
    if task == "retrieval":
        return {
            "score": scores["seen"]["mean_recall"],
            "blind": scores["shuffled"]["mean_recall"],
            "recalls": scores["seen"],
            "test_samples": scores["items"],
        }
    key = "vqa_accuracy" if task == "vqa" else "CIDEr"
    return {
        "score": scores["seen"]["metrics"][key],
        "blind": scores["blind"]["metrics"][key],
        "test_samples": scores["count"],
    }


def _logged(log: Path, marker: str) -> str:
    for line in log.read_text().splitlines():
        if marker in line:
            return line.split(marker, 1)[1].strip()
    return "?"


def _seconds_per_step(log: Path) -> float | None:
    """From the trainer's last line on its steps: "trained N steps in T s: X s/step ..."."""
    found = re.search(r"trained \d+ steps in \d+ s: ([\d.]+) s/step", log.read_text())
    return float(found[1]) if found else None


def table(rows: list[dict], cache: str = "from empty cache") -> str:
    lines = [
        f"| job | test metric | score | blind | by question type | wall time ({cache}) "
        "| s/step | peak memory | trainable |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['job']}` | failed: {r['error']} | | | | | | | |")
            continue
        per_step = r.get("seconds_per_step")
        kinds = ", ".join(f"{k} {100 * v:.1f}" for k, v in r.get("by_question_type", {}).items())
        scale = 100 if r["metric"] == "VQA accuracy" else 1
        lines.append(
            f"| `{r['command']}` | {r['metric']} ({r['test_samples']} samples) | "
            f"{scale * r['score']:.{1 if scale == 100 else 3}f} | "
            f"{scale * r['blind']:.{1 if scale == 100 else 3}f} | {kinds} | "
            f"{r['seconds'] / 60:.1f} min | {'?' if per_step is None else f'{per_step:.2f}'} | "
            f"{r['peak_gb']:.2f} GB | {r['trainable']} |"
        )
    lines += [f"\n`{r['job']}`: WARNING, {w}" for r in rows for w in r.get("warnings", [])]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="main_jobs")
    parser.add_argument("--jobs", nargs="*", default=JOBS, choices=JOBS)
    parser.add_argument("--cache", type=Path, help="one cache for every job (default: each empty)")
    parser.add_argument("--variants-only", action="store_true", help="no rows without overrides")
    parser.add_argument(
        "--variant", action="append", default=[], help="overrides, e.g. faithful=true"
    )
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    variants = args.variant if args.variants_only else ["", *args.variant]
    if not variants:
        parser.error("--variants-only needs at least one --variant")
    cache = args.cache.resolve() if args.cache else None
    rows = []
    for job in args.jobs:
        for variant in variants:
            print(f"running {job} {variant} ...", file=sys.stderr, flush=True)
            rows.append(run_job(job, out, variant, cache))
        (out / "main_jobs.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows, "from a shared cache" if cache else "from empty cache"))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
