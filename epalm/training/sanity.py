"""Whether a scored run is a result at all: a model no better than blind, or one whose
generations are empty or one unit repeated, gets a loud warning instead of a quiet 0.0000."""

from __future__ import annotations

import re
from collections.abc import Mapping

# text made of one short unit said three or more times ("...]...]...]", "poraryporary...",
# "the the the"): what a model whose decoding is broken produces
_REPEATED = re.compile(r"(.{1,16}?)(?:\s*\1){2,}\s*", re.DOTALL)
# warn when at least this share of the predictions is empty or degenerate
DEGENERATE_SHARE = 0.25


def is_degenerate(text: str) -> bool:
    """Empty, or one unit repeated at least three times and nothing else."""
    text = text.strip()
    return not text or _REPEATED.fullmatch(text) is not None


def generation_health(predictions: Mapping[str, str]) -> dict[str, float | list[str]]:
    """Shares of empty and degenerate predictions, with a few examples of the latter."""
    texts = list(predictions.values())
    bad = [t for t in texts if is_degenerate(t)]
    total = max(len(texts), 1)
    return {
        "empty": sum(not t.strip() for t in texts) / total,
        "degenerate": len(bad) / total,  # empty ones included
        "examples": bad[:3],
    }


def sanity_warnings(seen: float, blind: float | None, health: Mapping[str, object]) -> list[str]:
    """What makes a score no result: no better than blind, or broken generations."""
    warnings = []
    if blind is not None and seen <= blind:
        warnings.append(
            f"the trained model scores {seen:.4f}, no better than blind ({blind:.4f}): it does not "
            "use the perception"
        )
    share = float(health["degenerate"])
    if share >= DEGENERATE_SHARE:
        warnings.append(
            f"{100 * share:.0f}% of the generations are empty or one unit repeated "
            f"(e.g. {health['examples'][:2]}): the decoding or the training is broken"
        )
    return warnings
