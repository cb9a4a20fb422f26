"""What epalm's injection costs: the LM's forward and backward pass with perception injected
against the plain LM, on the same sequence length, side by side.

    python -m benchmarks.injection [--batch 32] [--repeats 7]

The default stack's LM (SmolLM2-135M, 6 levels into layers 17..28) is loaded twice: once as
epalm hooks it, once with the hooks removed (the plain LM). Both get the same tokens, the plain
one with a pad token where epalm's slot sits, and both compute the LM's full loss. So that the
backward pass spans every layer in both (a frozen LM alone would need none), both ask for
gradients at the input embeddings, as a soft prompt or an adapter at the input would. The
epalm side also runs the connector on cached features and its backward pass. Times alternate
between the two; the overhead is the median of the round-by-round ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.common import (
    Report,
    Table,
    Target,
    default_stack,
    features,
    finish,
    paired_ratio,
    parse,
    parser,
    side_by_side,
    stack_name,
    vqa_texts,
)
from epalm import EPALM
from epalm.text import IGNORE_INDEX


def plain_inputs(model: EPALM, texts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same text with pad tokens where epalm's prefix goes: the same sequence length."""
    batch, prefix = texts["input_ids"].shape[0], model.injector.prefix_length
    pad = texts["input_ids"].new_full((batch, prefix), model.tokenizer.pad_token_id)
    return {
        "input_ids": torch.cat([pad, texts["input_ids"]], 1),
        "attention_mask": torch.cat([torch.ones_like(pad), texts["attention_mask"]], 1),
        "labels": torch.cat([torch.full_like(pad, IGNORE_INDEX), texts["labels"]], 1),
    }


def passes(run: Any) -> dict[str, Any]:
    """Forward only (no gradients) and forward + backward of ``run()``'s loss."""

    def forward() -> None:
        with torch.no_grad():
            run()

    def forward_backward() -> None:
        run().backward()

    return {"forward": forward, "forward + backward": forward_backward}


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, help="default 32 (quick: 4)")
    p.add_argument("--repeats", type=int, help="default 7 (quick: 2)")
    args = parse(p, argv)
    args.batch = args.batch or (4 if args.quick else 32)
    args.repeats = args.repeats or (2 if args.quick else 7)

    injected = default_stack("image", args.quick)
    plain = default_stack("image", args.quick)
    plain.injector.remove()
    for model in (injected, plain):
        model.train()
        model.lm.enable_input_require_grads()  # the backward pass spans every layer in both
    texts = vqa_texts(injected, args.batch)
    feats = {"image": features(injected, "image", args.batch)}
    plain_batch = plain_inputs(plain, texts)

    epalm_passes = passes(lambda: injected(**texts, features=feats).loss)
    plain_passes = passes(lambda: plain.lm(**plain_batch, use_cache=False).loss)
    results: dict[str, Any] = {
        "stack": stack_name(injected),
        "tokens": plain_batch["input_ids"].shape[1],
    }
    table = Table(
        f"Injection overhead, batch {args.batch}, {results['tokens']} tokens, "
        f"best of {args.repeats}",
        ["pass", "plain LM (s)", "with injection (s)", "overhead (median of paired ratios)"],
    )
    for name in epalm_passes:
        t = side_by_side({"plain": plain_passes[name], "epalm": epalm_passes[name]}, args.repeats)
        plain_s, epalm_s = min(t["plain"]), min(t["epalm"])
        overhead = paired_ratio(t["epalm"], t["plain"]) - 1
        results[name] = {"plain_seconds": plain_s, "epalm_seconds": epalm_s, "overhead": overhead}
        table.add(name, plain_s, epalm_s, f"{overhead:+.1%}")
    report = Report(f"Injection overhead ({results['stack']})", [table], results)
    if not args.quick:
        report.targets.append(
            Target(
                "injection overhead, forward + backward",
                100 * results["forward + backward"]["overhead"],
                5,
                "%",
                at_most=True,
            )
        )
    finish(report, args)


if __name__ == "__main__":
    main()
