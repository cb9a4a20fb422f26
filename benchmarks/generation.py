"""Generation speed: one caption's latency (batch 1) and throughput at batch 16, greedy and beam
search, with the KV cache and without, side by side.

    python -m benchmarks.generation [--new-tokens 30] [--repeats 3]

The default caption stack (``epalm train task=caption``: SmolLM2-135M, DINOv2-S) captions
cached image features; every run generates exactly ``--new-tokens`` tokens (the end-of-text
token is held off), so the cache on and off do the same work. Without the cache each new token
re-reads the whole sequence so far; with it, only the new token runs through the LM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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
    profile_table,
    side_by_side,
    stack_name,
)
from epalm import EPALM

DECODINGS = {"greedy": 1, "beam 3": 3}


def captioner(model: EPALM, batch: int) -> Callable[..., Callable[[], None]]:
    """``run(new_tokens, beams, cache)``: a function captioning ``batch`` cached images."""
    feats = {"image": features(model, "image", batch)}
    prompt = model.tokenizer([model.prompt_for(None)] * batch, return_tensors="pt", padding=True)

    def run(new_tokens: int, beams: int, cache: bool) -> Callable[[], None]:
        options = {"num_beams": beams, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens}

        def generate() -> None:
            out = model.generate(**prompt, features=feats, use_cache=cache, **options)
            assert out.shape == (batch, new_tokens), out.shape

        return generate

    return run


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--new-tokens", type=int, default=30)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--repeats", type=int, help="default 3 (quick: 1)")
    args = parse(p, argv)
    args.repeats = args.repeats or (1 if args.quick else 3)

    model = default_stack("image", args.quick, ["task=caption"]).eval()
    results: dict[str, Any] = {"stack": stack_name(model)}
    table = Table(
        f"{args.new_tokens} new tokens, best of {args.repeats}",
        [
            "batch",
            "decoding",
            "with cache (s)",
            "without (s)",
            "cache speed-up",
            "tokens/s (cache)",
        ],
    )
    report = Report(f"Generation ({results['stack']})", [table], results)
    for batch in args.batches:
        caption = captioner(model, batch)
        for decoding, beams in DECODINGS.items():
            runs = {
                name: caption(args.new_tokens, beams, name == "cache")
                for name in ("cache", "no cache")
            }
            t = side_by_side(runs, args.repeats)
            cached, uncached = min(t["cache"]), min(t["no cache"])
            speedup = paired_ratio(t["no cache"], t["cache"])
            tokens_per_s = batch * args.new_tokens / cached
            results[f"batch {batch}, {decoding}"] = {
                "cache_seconds": cached,
                "no_cache_seconds": uncached,
                "speedup": speedup,
                "tokens_per_s": tokens_per_s,
            }
            table.add(batch, decoding, cached, uncached, f"{speedup:.1f}x", tokens_per_s)
            if not args.quick:
                report.targets.append(
                    Target(f"KV cache, batch {batch}, {decoding}", speedup, 3, "x")
                )
    if args.profile:
        caption = captioner(model, args.batches[0])
        for cache in (True, False):
            run = caption(args.new_tokens, 1, cache)
            where = f"batch {args.batches[0]}, greedy, {'with' if cache else 'without'} the cache"
            report.notes.append(f"Where the time goes, {where}:\n{profile_table(run)}")
    finish(report, args)


if __name__ == "__main__":
    main()
