"""The models a demo serves: given, or found where the main jobs write them; loaded once, with
one frozen LM shared by every checkpoint built on it."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from epalm.adapters import changes_lm
from epalm.errors import MissingFileError
from epalm.model import CONFIG_NAME, EPALM
from epalm.zoo.cache import using_cache

log = logging.getLogger("epalm.demo")
MODALITIES = ("image", "video", "audio")


class NoModelsError(MissingFileError):
    """No checkpoint was given and none lies in the runs directory."""


@dataclass
class ServedModel:
    name: str  # what the page calls it: the run's name, e.g. "image-vqa"
    directory: Path
    model: EPALM
    task: str | None  # what it was trained for: "caption", "vqa" or None (not recorded)

    def slot_for(self, modality: str) -> str | None:
        """The slot that perceives ``modality`` (None: this model does not)."""
        slots = [s for s, p in self.model.perceivers.items() if p.modality == modality]
        return slots[0] if slots else None

    def task_on(self, modality: str) -> str | None:
        """What it does on ``modality``: a multi-task model's task there ("vqa" first), else
        what it was trained for."""
        slot = self.slot_for(modality)
        kinds = {t.kind for t in self.model.config.tasks.values() if t.slot == slot}
        if kinds:
            return "vqa" if "vqa" in kinds else "caption"
        return self.task


def checkpoints_to_serve(given: Sequence[str], runs: str) -> list[Path]:
    """The given checkpoints, else every ``<runs>/*/final`` (what ``epalm train`` leaves)."""
    if given:
        return [Path(g) for g in given]
    found = sorted(p.parent for p in Path(runs).glob(f"*/final/{CONFIG_NAME}"))
    if not found:
        raise NoModelsError(
            f"no trained model to serve: none given and none under {runs}/ (looked for "
            f"{runs}/*/final). Train one with `epalm train` (image question answering; "
            "modality=video|audio and task=caption choose others), or give checkpoint=DIR"
        )
    return found


def load_models(
    directories: Sequence[Path], model_cache: str | None = None
) -> dict[str, ServedModel]:
    """Each checkpoint by its display name; checkpoints on the same LM share one copy of it."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lms: dict[str, torch.nn.Module] = {}
    served: dict[str, ServedModel] = {}
    for directory in tqdm(directories, desc="loading models", unit="model"):
        lm_key = _lm_key(directory)
        with using_cache(model_cache):
            model = EPALM.from_pretrained(directory, lm=lms.get(lm_key) if lm_key else None)
        if lm_key:
            lms.setdefault(lm_key, model.lm)
        name = _unique(_display_name(directory), served)
        served[name] = ServedModel(name, directory, model.to(device).eval(), model.config.text.task)
        log.info("serving %s from %s (perceives %s)", name, directory, ", ".join(model.perceivers))
    return served


def _lm_key(directory: Path) -> str | None:
    """Checkpoints on the same LM share it, unless an adapter changes the LM itself (LoRA,
    trained norms or biases): such a model keeps an LM of its own (None)."""
    config = EPALM.saved_config(directory)
    if changes_lm(config.adapter):
        return None
    return json.dumps(dataclasses.asdict(config.lm), sort_keys=True)


def display_names(directories: Sequence[Path], taken: Mapping[str, Any]) -> list[str]:
    """What the page calls each checkpoint, none the same as another's or one in ``taken``."""
    names: dict[str, Any] = dict(taken)
    for directory in directories:
        names[_unique(_display_name(directory), names)] = directory
    return list(names)[len(taken) :]


def _display_name(directory: Path) -> str:
    """``runs/image-vqa/final`` -> ``image-vqa``; ``runs/image-vqa/best`` -> ``image-vqa (best)``."""
    directory = directory.resolve()
    if directory.name == "final":
        return directory.parent.name
    if directory.name == "best":
        return f"{directory.parent.name} (best)"
    return directory.name


def _unique(name: str, taken: Mapping[str, Any]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name} ({n})", n + 1
    return candidate
