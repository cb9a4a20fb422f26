"""What each LM adapter method costs per training step, beside the connector alone, measured
side by side in one process (the steps timed in alternation).

    python -m benchmarks.adapters [--stack embedded|paper] [--batch 32] [--repeats 3]

- ``embedded``: the image VQA main job's model (SmolLM2-135M, DINOv2-S at 112 px, 6 projections,
  no soft prompt), from cached features.
- ``paper``: eP-ALM's base stack built from configs with random weights (nothing to download):
  OPT-2.7B + ViT-B/16, 6 projections and the 10-token MLP prompt, the LM in bf16 with bf16
  autocast; it needs a GPU (the five models are alive at once, to be timed in alternation).

For each method: trainable parameters and their share of all, seconds per step, and on a GPU
the peak memory of a step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from benchmarks.common import (
    Table,
    cached_batch,
    default_stack,
    run_step_benchmark,
    side_by_side,
    training_step,
)
from benchmarks.utilization import paper_config
from epalm import EPALM
from epalm.config import AdapterConfig, EPALMConfig
from epalm.tasks.collate import to_device

METHODS = ("none", "bottleneck", "compacter", "hyperformer", "lora")
QUICK_KWARGS = {"bottleneck": {"reduction_factor": 4}, "compacter": {"reduction_factor": 4}}
QUICK_KWARGS["hyperformer"] = {"reduction_factor": 4, "embedding_dim": 8, "projector_hidden": 16}


def stack(base: EPALMConfig, tokenizer: Any, method: str, quick: bool, device: str) -> EPALM:
    """``base`` with ``method`` (its default settings) inside the LM."""
    kwargs = QUICK_KWARGS.get(method, {}) if quick else {}
    adapter = AdapterConfig(name=method, kwargs=kwargs, shared=method != "hyperformer")
    torch.manual_seed(0)
    return EPALM(replace(base, adapter=adapter), tokenizer=tokenizer).to(device)


def base_stack(kind: str, quick: bool, gpu: bool) -> tuple[EPALMConfig, Any]:
    """The config and tokenizer every method's model is built from."""
    if kind == "embedded" or quick:
        base = default_stack("image", quick)
        return base.config, base.tokenizer
    config = paper_config(quick=False)
    lm = replace(config.lm, dtype="bfloat16" if gpu else "float32")
    return replace(config, lm=lm), None


def measure(args: Any) -> tuple[Table, dict[str, Any]]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device == "cuda"
    if args.stack == "paper" and not gpu and not args.quick:
        raise SystemExit("--stack paper needs a GPU: five OPT-2.7B models in fp32 do not fit")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if gpu else None
    steps, rows = {}, {}
    base, tokenizer = base_stack(args.stack, args.quick, gpu)
    for method in args.methods:
        model = stack(base, tokenizer, method, args.quick, device)
        inputs = to_device(cached_batch(model, "image", args.batch), device)
        step = training_step(model, autocast=autocast)
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        step(inputs)  # warm-up, and the peak of one step
        report = model.parameter_report()
        rows[method] = {
            "trainable": report.trainable,
            "share": report.share,
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if gpu else None,
        }
        steps[method] = lambda step=step, inputs=inputs: step(inputs)
    times = side_by_side(steps, repeats=args.repeats, warmup=0, device=device)
    name = "paper stack (OPT-2.7B + ViT-B/16, random weights)" if args.stack == "paper" else ""
    table = Table(
        f"LM adapters, {name or 'image VQA main job'} (batch {args.batch}, {device})",
        ["adapter", "trainable", "share of all", "s/step", "vs none", "peak memory"],
    )
    for method, row in rows.items():
        row["seconds"] = min(times[method])
        ratio = row["seconds"] / min(times[args.methods[0]])
        memory = "-" if row["peak_gb"] is None else f"{row['peak_gb']:.2f} GB"
        table.add(
            method, f"{row['trainable']:,}", f"{100 * row['share']:.2f}%", row["seconds"],
            f"{ratio:.2f}x", memory,
        )  # fmt: skip
    return table, rows


def main(argv: Sequence[str] | None = None) -> None:
    def options(p: Any) -> None:
        p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))

    run_step_benchmark(__doc__, "LM adapters", measure, argv, options)


if __name__ == "__main__":
    main()
