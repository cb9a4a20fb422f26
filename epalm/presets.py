"""Named presets for frozen parts, shipped as YAML inside the package (Hydra config groups).

``lm/<name>.yaml`` holds an ``LMConfig``; ``encoder/<name>.yaml`` a modality and a
``PerceiverConfig``. Each states its hidden size and depth, from which the injection schedule
follows, and which the model checks against what it loads.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf

from epalm.config import LMConfig, PerceiverConfig

CONFIG_DIR = Path(str(resources.files("epalm") / "configs"))


def preset_names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _load(group: str, name: str) -> dict:
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"no {group} preset {name!r}; known: {', '.join(preset_names(group))}")
    return OmegaConf.to_container(OmegaConf.load(path))


def lm_preset(name: str) -> LMConfig:
    return LMConfig(**_load("lm", name))


def encoder_preset(name: str) -> tuple[str, PerceiverConfig]:
    """``(modality, perceiver config)`` of an encoder preset."""
    data = _load("encoder", name)
    return data["modality"], PerceiverConfig(**data["perceiver"])
