"""How a training step's time grows with the LM's size, the number of injected levels, and the
number of video frames, each swept in one run.

    python -m benchmarks.scaling [--batch 32] [--repeats 2] [--sweeps lm levels frames]

- **LM size**: a tiny LM, and SmolLM2's architecture at 135M, 360M and 1.7B parameters, all
  built from configs with random weights (nothing to download); each trained from the same
  cached DINOv2-S features, 6 levels, no soft prompt. GFLOP per step as counted by
  ``torch.utils.flop_counter``.
- **Injected levels**: the default image stack with 1 to 12 levels (one projection each, into
  layers 17..28 of SmolLM2-135M).
- **Video frames**: the default video stack (DINOv2-S at 112 px per frame) with 4, 8 and 16
  frames, once with the frozen encoder run on the preprocessed frames every step (the eP-ALM
  way, decoding left out) and once from cached features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from benchmarks.common import (
    Report,
    Table,
    cached_batch,
    default_stack,
    features,
    finish,
    media_inputs,
    parse,
    parser,
    step_cost,
    vqa_texts,
)
from epalm import EPALM
from epalm.config import InjectionConfig, LMConfig
from epalm.model import BYTE_TOKENIZER
from epalm.testing import tiny_lm_config

SMOLLM2 = {  # SmolLM2-135M's config; the larger ones change only their sizes
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "pad_token_id": 2,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
SIZES = {
    "SmolLM2-135M": {},
    "SmolLM2-360M": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                     "num_attention_heads": 15, "num_key_value_heads": 5},
    "SmolLM2-1.7B": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                     "num_attention_heads": 32, "num_key_value_heads": 32},
}  # fmt: skip
QUICK_SIZES = {  # --quick: the same sweep, small
    "width 128": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 16,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32},
}  # fmt: skip
# 16 layers: the default schedule then spans 6 layers, room for 6 levels
TINY_LM = {**tiny_lm_config("llama", 260), "num_hidden_layers": 16}


def lm_sizes(args: Any) -> tuple[Table, dict[str, Any]]:
    table = Table(
        f"LM size (batch {args.batch}, from cached features)",
        ["LM", "LM parameters", "GFLOP/step", "s/step", "samples/s"],
    )
    base = default_stack("image", args.quick)
    feats = {"image": features(base, "image", args.batch)}
    configs = {"tiny (16 layers, width 64)": TINY_LM}
    smollm2 = {**SMOLLM2, "vocab_size": 260} if args.quick else SMOLLM2
    for name, change in (QUICK_SIZES if args.quick else SIZES).items():
        configs[name] = {**smollm2, **change}
    results = {}
    for name, lm_config in configs.items():
        tokenizer = BYTE_TOKENIZER if lm_config["vocab_size"] == 260 else base.config.lm.model
        lm = LMConfig(model_config=lm_config, tokenizer=tokenizer)
        model = EPALM(replace(base.config, lm=lm, injection=InjectionConfig()))
        _, secs, flops = step_cost(
            model, {**vqa_texts(model, args.batch), "features": feats}, args.repeats
        )
        params = sum(p.numel() for p in model.lm.parameters())
        results[name] = {"lm_parameters": params, "seconds": secs, "flops": flops}
        table.add(name, f"{params / 1e6:.1f}M", flops / 1e9, secs, args.batch / secs)
    return table, results


def levels(args: Any) -> tuple[Table, dict[str, Any]]:
    table = Table(
        f"Injected levels (default image stack, batch {args.batch}, from cached features)",
        ["levels", "trainable parameters", "s/step", "samples/s"],
    )
    results = {}
    for count in (1, 2, 3) if args.quick else (1, 2, 3, 6, 12):
        model = default_stack("image", args.quick, connector={"levels": count})
        _, secs, _ = step_cost(model, cached_batch(model, "image", args.batch), args.repeats)
        trainable = model.parameter_report().trainable
        results[str(count)] = {"trainable": trainable, "seconds": secs}
        table.add(count, f"{trainable:,}", secs, args.batch / secs)
    return table, results


def frames(args: Any) -> tuple[Table, dict[str, Any]]:
    table = Table(
        f"Video frames (default video stack, batch {args.batch})",
        ["frames", "encoder every step (s/step)", "from cache (s/step)", "ratio"],
    )
    results = {}
    for count in (2, 4) if args.quick else (4, 8, 16):
        model = default_stack("video", args.quick, perceiver={"num_frames": count})
        texts = vqa_texts(model, args.batch)
        _, media, _ = step_cost(
            model, {**texts, "media": media_inputs(model, "video", args.batch)}, args.repeats
        )
        _, cached, _ = step_cost(model, cached_batch(model, "video", args.batch), args.repeats)
        results[str(count)] = {"media_seconds": media, "cache_seconds": cached}
        table.add(count, media, cached, f"{media / cached:.1f}x")
    return table, results


SWEEPS = {"lm": lm_sizes, "levels": levels, "frames": frames}


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, help="default 32 (quick: 4)")
    p.add_argument("--repeats", type=int, help="timed steps per point; default 2 (quick: 1)")
    p.add_argument("--sweeps", nargs="+", choices=list(SWEEPS), default=list(SWEEPS))
    args = parse(p, argv)
    args.batch = args.batch or (4 if args.quick else 32)
    args.repeats = args.repeats or (1 if args.quick else 2)
    report = Report("Scaling")
    for name in args.sweeps:
        table, results = SWEEPS[name](args)
        report.tables.append(table)
        report.results[name] = results
    finish(report, args)


if __name__ == "__main__":
    main()
