"""``faithful=true``: train as eP-ALM's released code does (mshukor/eP-ALM at 9ecfeb9), where
epalm's defaults differ from it. Each difference is a setting of its own, usable alone; this
turns on all of them at once. ``docs/experiments.md`` lists them with eP-ALM's source lines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from epalm.training.settings import RunSettings

# nn.Embedding's default initialisation, which eP-ALM's soft prompt keeps (models/epalm.py:151,158)
EP_ALM_PROMPT_STD = 1.0


def changes(s: RunSettings) -> list[tuple[str, object, str]]:
    """``(key, value, why)`` for each setting that ``faithful=true`` sets in this run."""
    recipe = "ep-alm-caption" if s.task.name == "caption" else "ep-alm-vqa"
    found = [
        ("train.optimizer", recipe, f"eP-ALM's {s.task.name} scripts' param groups and schedule"),
        ("train.frozen_dropout", True, "model.train() on the whole model"),
        ("connector.init_std", EP_ALM_PROMPT_STD, "nn.Embedding's default"),
        ("injection.prefix_positions", "none", "text from position 0, none for the prefix"),
    ]
    if s.modality == "video":
        found.append(("encoder.kwargs.test_frames", "random", "sample_type 'rand' at test too"))
    return found


def as_released(s: RunSettings) -> None:
    """Switch ``s`` to eP-ALM's code's behaviour."""
    for key, value, _ in changes(s):
        section, name = key.rsplit(".", 1)
        owner = s
        for part in section.split("."):
            owner = getattr(owner, part)
        if isinstance(owner, dict):
            owner[name] = value
        else:
            setattr(owner, name, value)


def summary(s: RunSettings) -> str:
    """One log line: what ``faithful=true`` set, and why."""
    return "faithful=true, as eP-ALM's code runs: " + "; ".join(
        f"{key}={value} ({why})" for key, value, why in changes(s)
    )
