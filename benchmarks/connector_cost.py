"""What each connector costs per training step, side by side in one process (the steps timed in
alternation): the tokens its slot adds, the LM's FLOPs, seconds per step and, on a GPU, memory.

    python -m benchmarks.connector_cost [--stack embedded|paper] [--batch 32] [--repeats 3]
        [--connectors ep-alm all-tokens token-learner resampler joint-fusion]

- ``embedded``: the image VQA main job's model (SmolLM2-135M, DINOv2-S at 112 px, no soft
  prompt), each connector at its config's defaults (K = 8), from the features it reads.
- ``paper``: eP-ALM's base stack built from configs with random weights: OPT-2.7B + ViT-B/16
  (197 tokens a level), the LM and encoder in bf16 under bf16 autocast; it needs a GPU.

Scores come from training: ``python -m benchmarks.connectors`` (docs/connectors.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    Table,
    default_stack,
    media_inputs,
    run_step_benchmark,
    side_by_side,
    training_step,
    vqa_texts,
)
from benchmarks.utilization import paper_config
from epalm import EPALM
from epalm.config import ConnectorConfig
from epalm.model import perceive_for
from epalm.tasks.collate import to_device

CONNECTORS = ("ep-alm", "all-tokens", "token-learner", "resampler", "joint-fusion")
QUICK_KWARGS = {  # tiny encoders are 32 wide
    "resampler": {"width": 32, "heads": 2},
    "joint-fusion": {"width": 32, "heads": 2},
}


def build(args: Any, name: str, device: str) -> EPALM:
    """The stack with connector ``name`` (one level of tokens, or eP-ALM's 6 summaries)."""
    levels = (2 if args.quick else 6) if name == "ep-alm" else 1  # tiny encoders have 4
    kwargs = QUICK_KWARGS.get(name, {}) if args.quick else {}
    if args.stack == "paper" and not args.quick:
        base = paper_config(quick=False)
        connector = ConnectorConfig(name=name, kwargs=kwargs, levels=levels, prompt_tokens=0)
        lm = replace(base.lm, dtype="bfloat16")
        torch.manual_seed(0)
        model = EPALM(replace(base, lm=lm, connector=connector))
        model.perceivers.to(torch.bfloat16)
        return model.to(device)
    chosen = [] if name == "ep-alm" else [f"connector={name}"]
    connector = {"levels": levels} | ({"name": name, "kwargs": kwargs} if args.quick else {})
    return default_stack("image", args.quick, chosen, connector=connector).to(device)


def batch(model: EPALM, size: int, device: str) -> dict[str, Any]:
    """A VQA training batch with the features this model's connector reads."""
    slot = "image"
    media = to_device(media_inputs(model, slot, size), device)[slot]
    connector, perceiver = model.connectors[slot], model.perceivers[slot]
    features = perceive_for(connector, perceiver, media)
    return to_device({**vqa_texts(model, size), "features": {slot: features}}, device)


def lm_gflop(model: EPALM, inputs: dict[str, Any], autocast: Any) -> float:
    """The frozen LM's forward and backward FLOPs in one training step."""
    step = training_step(model, autocast=autocast)
    with FlopCounterMode(display=False) as counter:
        step(inputs)
    return sum(counter.get_flop_counts()[type(model.lm).__name__].values()) / 1e9


def measure(args: Any) -> tuple[Table, dict[str, Any]]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device == "cuda"
    if args.stack == "paper" and not gpu and not args.quick:
        raise SystemExit("--stack paper needs a GPU: OPT-2.7B models in fp32 do not fit")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if gpu else None
    steps, rows = {}, {}
    for name in args.connectors:
        model = build(args, name, device)
        inputs = batch(model, args.batch, device)
        slots = model.perceive(features=inputs["features"], text=model.prompt_text(
            inputs["input_ids"], inputs["attention_mask"], inputs["labels"]))  # fmt: skip
        step = training_step(model, autocast=autocast)
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        step(inputs)  # warm-up, and the peak of one step
        report = model.parameter_report()
        rows[name] = {
            "tokens": model.prefix_length(slots) - model.injector.prompt_tokens,
            "lm_gflop": lm_gflop(model, inputs, autocast),
            "trainable": report.parts["connectors"][0],
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if gpu else None,
        }
        steps[name] = lambda step=step, inputs=inputs: step(inputs)
    times = side_by_side(steps, repeats=args.repeats, warmup=0, device=device)
    name = (
        "paper stack (OPT-2.7B + ViT-B/16, random weights, bf16)" if args.stack == "paper" else ""
    )
    table = Table(
        f"Connectors, {name or 'image VQA main job'} (batch {args.batch}, {device})",
        ["connector", "tokens added", "LM GFLOP / step", "trainable", "s/step", "samples/s",
         "peak memory"],
    )  # fmt: skip
    for connector, row in rows.items():
        row["seconds"] = min(times[connector])
        memory = "-" if row["peak_gb"] is None else f"{row['peak_gb']:.2f} GB"
        table.add(
            connector, row["tokens"], f"{row['lm_gflop']:.1f}", f"{row['trainable']:,}",
            row["seconds"], f"{args.batch / row['seconds']:.1f}", memory,
        )  # fmt: skip
    return table, rows


def main(argv: Sequence[str] | None = None) -> None:
    def options(p: Any) -> None:
        p.add_argument("--connectors", nargs="+", choices=CONNECTORS, default=list(CONNECTORS))

    run_step_benchmark(__doc__, "Connectors", measure, argv, options)


if __name__ == "__main__":
    main()
