"""Every connector on the same VQA job, side by side: tokens, LM FLOPs, parameters, score, cost.

    python -m benchmarks.connectors [--out connectors] [--sets scenes easy-vqa ...]
        [--connectors ep-alm all-tokens token-learner token-learner:num_tokens=4 ...]
        [--extra train.max_steps=600 ...] [--cache DIR]

For each dataset (``scenes`` and ``easy-vqa`` for images, ``shapes-video``, ``sound-scenes``) and
each connector, runs ``epalm train modality=M task=vqa [data=D] [connector=C]`` in a fresh
process, one after the other on one machine and one shared cache (``<out>/cache`` by default),
then counts one training step of the trained model on the first ``train.batch_size`` training
samples with ``torch.utils.flop_counter.FlopCounterMode``: the LM's FLOPs (forward and
backward) are what the connector's tokens cost. ``ep-alm`` is the job's own default
(``connector=no-prompt``: eP-ALM's projections without a soft prompt); ``NAME:key=value,...``
sets the connector's own settings (``token-learner:num_tokens=4`` is K = 4). Prints a markdown
table and writes ``<out>/connectors.json``; a killed benchmark, run again with the same
``--out``, goes on after the rows it finished.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from torch.utils.flop_counter import FlopCounterMode

from benchmarks.main_jobs import finished_rows, run_job, shared_cache

SETS = {  # name -> (modality, overrides)
    "scenes": ("image", ["data=scenes"]),
    "easy-vqa": ("image", []),
    "shapes-video": ("video", []),
    "sound-scenes": ("audio", []),
}
CONNECTORS = ("ep-alm", "all-tokens", "token-learner", "resampler", "joint-fusion")


def overrides(data: str, connector: str, extra: list[str]) -> list[str]:
    """The job's overrides for ``connector`` (``NAME`` or ``NAME:key=value,...``) on ``data``."""
    name, _, settings = connector.partition(":")
    chosen = [] if name == "ep-alm" else [f"connector={name}"]
    chosen += [f"connector.kwargs.{kv}" for kv in settings.split(",") if kv]
    return [*SETS[data][1], *chosen, *extra]


def step_flops(modality: str, changes: list[str], run_dir: Path) -> dict[str, Any]:
    """The trained model's LM GFLOP for one training step on the first batch of the job's
    training set (from the feature cache the job filled), and the tokens its slot adds."""
    from accelerate import Accelerator

    from epalm import EPALM
    from epalm.tasks import Collator, model_inputs
    from epalm.training.compose import settings
    from epalm.training.data import load_split, sample_dataset
    from epalm.training.features import features_for

    run, _ = settings([f"modality={modality}", "task=vqa", *changes])
    model = EPALM.from_pretrained(run_dir / "final", frozen_check="skip").train()
    samples = load_split(run, "train")[: run.train.batch_size]
    features = features_for(run, model.perceivers[modality], samples, Accelerator(cpu=True))
    dataset = sample_dataset(samples, run, model.perceivers, features, train=True)
    inputs = model_inputs(Collator(model, train=True)([dataset[i] for i in range(len(samples))]))
    with FlopCounterMode(display=False) as counter:
        loss, count = model.target_loss(**inputs)
        (loss / count).backward()
    lm = counter.get_flop_counts()[type(model.lm).__name__]
    text = model.prompt_text(inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
    slots = model.perceive(inputs.get("media"), inputs.get("features"), text)
    tokens = model.prefix_length(slots) - model.injector.prompt_tokens
    return {"lm_gflop": sum(lm.values()) / 1e9, "tokens": tokens, "batch": len(samples)}


def table(rows: list[dict]) -> str:
    lines = [
        "| data | connector | tokens added to the LM | LM GFLOP / step | trainable | test VQA "
        "| blind | by question type | s/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['data']} | {r['connector']} | failed: {r['error']} |||||||")
            continue
        kinds = ", ".join(f"{k} {100 * v:.1f}" for k, v in r.get("by_question_type", {}).items())
        lines.append(
            f"| {r['data']} | {r['connector']} | {r['tokens']} | {r['lm_gflop']:.0f} | "
            f"{r['trainable']} | {100 * r['score']:.1f} | {100 * r['blind']:.1f} | {kinds} | "
            f"{r['seconds_per_step']:.2f} |"
        )
    lines.append("")
    lines += [f"- {r['data']}, {r['connector']}: `{r.get('command', '?')}`" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="connectors")
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    parser.add_argument("--connectors", nargs="*", default=list(CONNECTORS))
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every run")
    parser.add_argument("--cache", type=Path, help="the shared cache (default: <out>/cache)")
    args = parser.parse_args()
    out, cache = shared_cache(args.out, args.cache)  # the FLOP count reads its features
    path = out / "connectors.json"
    rows = finished_rows(path)
    done = {(r["data"], r["connector"]) for r in rows}
    for data in args.sets:
        modality = SETS[data][0]
        for connector in args.connectors:
            if (data, connector) in done:
                continue
            changes = overrides(data, connector, args.extra)
            print(f"running {data} {connector} ...", file=sys.stderr, flush=True)
            row = {"data": data, "connector": connector}
            row.update(run_job(f"{modality}-vqa", out, " ".join(changes), cache))
            if "error" not in row:
                name = "+".join([f"{modality}-vqa", *(c.replace("=", "-") for c in changes)])
                row.update(step_flops(modality, changes, out / name))
            rows.append(row)
            path.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
