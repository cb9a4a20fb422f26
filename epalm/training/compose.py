"""Hydra composition of a job's config from the groups shipped in ``epalm/configs``.

The compose API (not ``@hydra.main``) keeps the CLI in charge: no working-directory change, no
Hydra output folders, our own ``--help`` and errors without a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf

from epalm.presets import CONFIG_DIR, preset_names
from epalm.training.settings import RunSettings, from_container

PRIMARY = "epalm"
GROUPS = ("modality", "task", "lm", "encoder", "connector", "adapter", "data", "experiment")


class ComposeError(ValueError):
    """An override Hydra cannot apply: an unknown group, choice or key."""


def compose(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The fully resolved config for ``overrides`` (``group=choice``, ``key=value``, ``+key=v``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=PRIMARY, overrides=list(overrides))
        return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ComposeError(_first_lines(str(err))) from None


def settings(overrides: Sequence[str] = ()) -> tuple[RunSettings, dict[str, Any]]:
    """Checked settings and the resolved config they came from (saved with the run)."""
    resolved = compose(overrides)
    return from_container(resolved), resolved


def to_yaml(resolved: dict[str, Any]) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(resolved))


def choices() -> dict[str, list[str]]:
    """Every config group and its choices."""
    return {group: preset_names(group) for group in GROUPS}


def help_text(command: str) -> str:
    lines = [
        f"usage: epalm {command} [group=choice ...] [key=value ...]",
        "",
        _PURPOSE[command],
        "",
        "Config groups (group=choice):",
    ]
    lines += [f"  {group:<10} {', '.join(names)}" for group, names in choices().items()]
    if command == "demo":
        lines += ["", "Demo keys (demo.key=value), with their defaults:"]
        for key, value in compose()["demo"].items():
            lines.append(f"  demo.{key}={value if isinstance(value, str) else json.dumps(value)}")
    lines += [
        "",
        "Any key of the resolved config can be set, e.g. train.max_steps=100 train.lr=1e-3",
        "run_dir=runs/mine eval.blind=false; +key=value adds a key. The resolved config is",
        f"printed at start and saved as <run_dir>/config.yaml. Defaults: {CONFIG_DIR}/{PRIMARY}.yaml",
        "",
        "Examples:",
        "  epalm train modality=audio task=caption",
        "  epalm train modality=video task=vqa train.max_steps=50 eval.blind=false",
        "  epalm train data=manifest data.root=DIR  (your own train/val/test.jsonl; any modality:",
        "                                           modality=video; check them: epalm data check DIR)",
        "  accelerate launch -m epalm train modality=image  (many processes or GPUs)",
        "  epalm demo  (every runs/*/final in a web page; demo.port=8080 demo.auth=me:secret)",
    ]
    return "\n".join(lines)


_PURPOSE = {
    "train": "Train the connector (the LM and the encoder stay frozen; adapter=NAME adds modules\n"
    "inside the LM), evaluate the result on the test split with and without the perception,\n"
    "and save <run_dir>/final.",
    "eval": "Score a saved model (checkpoint=DIR, default <run_dir>/final) on eval.split,\n"
    "and blind (perception removed) unless eval.blind=false.",
    "predict": "Caption, or answer predict.question about, the files in predict.media=[a,b]\n"
    "with a saved model (checkpoint=DIR, default <run_dir>/final).",
    "demo": "Serve saved models in a web page: checkpoint=DIR (or demo.checkpoints=[A,B]),\n"
    "by default every runs/*/final; on 127.0.0.1 unless demo.host, demo.share or demo.auth\n"
    "say otherwise (the demo.* keys below; docs/demo.md explains them).",
    "cache": "Compute the frozen encoder's features of every split of the data once, into\n"
    "the feature cache that training and evaluation read.",
}


def _first_lines(message: str, limit: int = 12) -> str:
    # Hydra appends the whole config search path to some errors; a person needs the first part.
    kept = []
    for line in message.strip().splitlines():
        if line.startswith("Config search path"):
            break
        kept.append(line)
    return "\n".join(kept[:limit])
