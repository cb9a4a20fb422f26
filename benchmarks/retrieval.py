"""LilT's table on the embedded data: every ``align`` variant of ``task=retrieval``, side by side.

    python -m benchmarks.retrieval [--out retrieval] [--modalities image video audio]
        [--variants heads layernorm bitfit adapters last-layers lit full]
        [--extra train.max_steps=400 ...] [--cache DIR]

For each modality (image: the scenes set; video: shapes-video; audio: sound-sequences) and each
variant, runs ``epalm train modality=M task=retrieval align=V`` in a fresh process, one after
the other on one machine and one shared cache (``<out>/cache`` by default). Reports the
trainable parameters and their share, R@1 both ways, the mean recall, the same on shuffled
pairs, wall time and seconds per step, and checks LilT's two claims against ``full``: the best
variant training at most 7% of the parameters is within 1 point of it in mean recall, and one
training at most 1% reaches 75% of it. Prints a markdown table and writes
``<out>/retrieval.json``; run again with the same ``--out``, it goes on after the rows it
finished.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.main_jobs import finished_rows, run_job, shared_cache

MODALITIES = ("image", "video", "audio")
VARIANTS = ("heads", "layernorm", "bitfit", "adapters", "last-layers", "lit", "full")


def share(row: dict) -> float:
    """The trainable share in percent, from the log's "N of M (S%)"."""
    return float(row["trainable"].rsplit("(", 1)[1].rstrip("%)"))


def claims(rows: list[dict]) -> list[str]:
    """LilT's two claims, per modality, against ``full``'s mean recall."""
    lines = []
    for modality in dict.fromkeys(r["modality"] for r in rows):
        done = [r for r in rows if r["modality"] == modality and "error" not in r]
        full = next((r["score"] for r in done if r["variant"] == "full"), None)
        if full is None:
            lines.append(f"- {modality}: no `full` row to compare with")
            continue
        for limit, need, what in (
            (7.0, full - 1, "within 1 point of"),
            (1.0, 0.75 * full, "75% of"),
        ):
            best = max(
                (r for r in done if share(r) <= limit), key=lambda r: r["score"], default=None
            )
            if best is None:
                lines.append(f"- {modality}: no variant trains at most {limit:g}%")
                continue
            verdict = "met" if best["score"] >= need else "not met"
            lines.append(
                f"- {modality}: best at most {limit:g}% trained: {best['variant']} "
                f"({share(best):.2f}%) {best['score']:.1f} against full {full:.1f} "
                f"({what} full: {verdict})"
            )
    return lines


def _per_step(row: dict) -> str:
    return "?" if row.get("seconds_per_step") is None else f"{row['seconds_per_step']:.2f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| modality | align | trainable (share) | R@1 text->media | R@1 media->text | mean recall "
        "| shuffled pairs | wall time | s/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['modality']} | {r['variant']} | failed: {r['error']} ||||||")
            continue
        recalls = r["recalls"]
        lines.append(
            f"| {r['modality']} | {r['variant']} | {r['trainable']} | "
            f"{recalls['text_to_media_r@1']:.1f} | {recalls['media_to_text_r@1']:.1f} | "
            f"{r['score']:.1f} | {r['blind']:.1f} | {r['seconds'] / 60:.1f} min | "
            f"{_per_step(r)} |"
        )
    lines += ["", *claims(rows), ""]
    lines += [f"- {r['modality']}, {r['variant']}: `{r.get('command', '?')}`" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="retrieval")
    parser.add_argument("--modalities", nargs="*", default=list(MODALITIES), choices=MODALITIES)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every run")
    parser.add_argument("--cache", type=Path, help="the shared cache (default: <out>/cache)")
    args = parser.parse_args()
    out, cache = shared_cache(args.out, args.cache)
    path = out / "retrieval.json"
    rows = finished_rows(path)
    done = {(r["modality"], r["variant"]) for r in rows}
    for modality in args.modalities:
        for variant in args.variants:
            if (modality, variant) in done:
                continue
            print(f"running {modality} align={variant} ...", file=sys.stderr, flush=True)
            row = {"modality": modality, "variant": variant}
            changes = " ".join([f"align={variant}", *args.extra])
            row.update(run_job(f"{modality}-retrieval", out, changes, cache))
            rows.append(row)
            path.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
