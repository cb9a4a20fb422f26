"""Captioning: which caption a sample trains on, and cleaning generated captions."""

from __future__ import annotations

import random

from epalm.data.manifest import Sample


def caption_target(sample: Sample, rng: random.Random | None = None) -> str:
    """A random caption of ``sample`` when training (``rng`` given), else its first."""
    if not sample.captions:
        raise ValueError(f"sample {sample.id!r} has no captions")
    return rng.choice(sample.captions) if rng is not None else sample.captions[0]


def clean_caption(text: str) -> str:
    """Generated text -> the caption: its first line, spaces tidied (case and punctuation kept:
    the caption metrics tokenise and lower-case themselves)."""
    first_line = text.strip().split("\n", 1)[0]
    return " ".join(first_line.split())
