"""How close a training step comes to the hardware: its FLOPs per second against the measured
dense matmul peak, in the same dtype, in one run.

    python -m benchmarks.utilization [--modalities image video audio] [--batch 32] [--steps 5]
    python -m benchmarks.utilization --stack paper --device cuda --dtype bfloat16 [--batch 64]

The FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one real training step
(forward and backward; the frozen LM computes no weight gradients, so none are counted), then
divided by the step's best wall time of several. The peak is the best square ``a @ b`` this machine
does in the same dtype, measured in the same run.

``--stack default``: ``epalm train modality=M`` 's model (SmolLM2-135M, DINOv2-S or Whisper
tiny.en, 6 levels, no soft prompt), trained from cached features, on the embedded VQA text
"Question: what color is the shape? Answer: blue". ``--stack paper``: eP-ALM's own scale, built
from configs with random weights: OPT-2.7B with ViT-B/16 at 224 px, 6 levels, 10 soft-prompt
tokens, the encoder run every step; frozen weights in ``--dtype``, the connector in fp32 under
autocast. It is meant for a GPU; ``--quick`` shrinks both stacks so that CI runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from benchmarks.common import (
    MODALITIES,
    Report,
    Table,
    Target,
    cached_batch,
    default_stack,
    finish,
    matmul_peak,
    media_inputs,
    parse,
    parser,
    profile_table,
    step_cost,
    vqa_texts,
)
from epalm import EPALM, EPALMConfig
from epalm.config import ConnectorConfig, LMConfig, PerceiverConfig
from epalm.model import BYTE_TOKENIZER
from epalm.tasks.collate import to_device

OPT_2_7B = {
    "model_type": "opt",
    "hidden_size": 2560,
    "num_hidden_layers": 32,
    "ffn_dim": 10240,
    "num_attention_heads": 32,
    "word_embed_proj_dim": 2560,
    "vocab_size": 50272,
    "max_position_embeddings": 2048,
    "pad_token_id": 0,
}
VIT_B16 = {
    "model_type": "vit",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "image_size": 224,
    "patch_size": 16,
}
# --quick: the same architectures, small (deep enough for 6 levels over the default schedule)
OPT_QUICK = {**OPT_2_7B, "hidden_size": 64, "num_hidden_layers": 16, "ffn_dim": 128}
OPT_QUICK.update(num_attention_heads=4, word_embed_proj_dim=64, vocab_size=260)
VIT_QUICK = {**VIT_B16, "hidden_size": 32, "num_hidden_layers": 6, "num_attention_heads": 2}
VIT_QUICK.update(intermediate_size=64, image_size=32, patch_size=8)


def paper_stack(quick: bool) -> EPALM:
    """eP-ALM's OPT-2.7B + ViT-B/16 from configs (random weights), with its connector."""
    torch.manual_seed(0)
    return EPALM(paper_config(quick))


def paper_config(quick: bool) -> EPALMConfig:
    return EPALMConfig(
        lm=LMConfig(model_config=OPT_QUICK if quick else OPT_2_7B, tokenizer=BYTE_TOKENIZER),
        perceivers={
            "image": PerceiverConfig("image", {"model_config": VIT_QUICK if quick else VIT_B16})
        },
        connector=ConnectorConfig(levels=6, prompt_tokens=10),
    )


def stacks(args: Any) -> dict[str, tuple[EPALM, dict[str, Any]]]:
    """name -> (model, one training batch) for the stacks asked for."""
    if args.stack == "paper":
        model = paper_stack(args.quick)
        dtype = getattr(torch, args.dtype)
        model.lm.to(dtype)
        model.perceivers.to(dtype)
        model.to(args.device)
        inputs = {**vqa_texts(model, args.batch), "media": media_inputs(model, "image", args.batch)}
        return {"OPT-2.7B + ViT-B/16 (image)": (model, inputs)}
    out = {}
    for modality in args.modalities:
        model = default_stack(modality, args.quick)
        out[f"default ({modality})"] = (model, cached_batch(model, modality, args.batch))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--stack", choices=["default", "paper"], default="default")
    p.add_argument("--modalities", nargs="+", choices=MODALITIES, default=list(MODALITIES))
    p.add_argument("--batch", type=int, help="default 32 (quick: 4)")
    p.add_argument("--steps", type=int, help="timed steps; default 5 (quick: 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = parse(p, argv)
    args.batch = args.batch or (4 if args.quick else 32)
    args.steps = args.steps or (2 if args.quick else 5)
    if args.stack == "default" and args.dtype != "float32":
        p.error("the default stack trains in float32 (the embedded jobs' CPU setting)")

    dtype = getattr(torch, args.dtype)
    autocast = (
        torch.autocast(args.device.split(":")[0], dtype=dtype)
        if args.dtype != "float32"
        else nullcontext()
    )
    sizes = (256,) if args.quick else ()
    peak = matmul_peak(dtype, args.device, sizes)
    results: dict[str, Any] = {"matmul_peak_flops": peak}
    profiles = []
    table = Table(
        f"Training-step utilisation, batch {args.batch}, {args.dtype}, best of {args.steps} steps",
        ["stack", "tokens/sample", "GFLOP/step", "s/step", "samples/s", "GFLOP/s", "utilisation"],
    )
    for name, (model, inputs) in stacks(args).items():
        inputs = to_device(inputs, args.device)
        step, secs, flops = step_cost(model, inputs, args.steps, autocast, args.device)
        if args.profile:
            profiles.append(f"Where the time goes, {name}:\n{profile_table(step)}")
        tokens = inputs["input_ids"].shape[1] + model.injector.prefix_length
        r = {"flops": flops, "seconds": secs, "tokens_per_sample": tokens}
        r["flops_per_s"] = r["flops"] / r["seconds"]
        r["samples_per_s"] = args.batch / r["seconds"]
        r["utilisation"] = r["flops_per_s"] / peak
        results[name] = r
        table.add(
            name,
            r["tokens_per_sample"],
            r["flops"] / 1e9,
            r["seconds"],
            r["samples_per_s"],
            r["flops_per_s"] / 1e9,
            f"{r['utilisation']:.0%}",
        )
    report = Report("Distance to the hardware limit", [table], results)
    report.notes.append(f"measured {args.dtype} matmul peak: {peak / 1e9:.1f} GFLOP/s")
    report.notes += profiles
    if not args.quick:
        first = next(k for k in results if k != "matmul_peak_flops")
        report.targets.append(
            Target(f"{first}: utilisation", 100 * results[first]["utilisation"], 40, "%")
        )
    finish(report, args)


if __name__ == "__main__":
    main()
