"""Where frozen models come from: a hub id, a local directory, or a config (random weights).

Every frozen part is named by a *source*: ``model`` (hub id, local directory or offline name,
found by ``epalm.zoo.resolve``) or
``model_config`` (an HF config dict with ``model_type``, randomly initialised from ``seed`` so
that the same source always rebuilds the same weights; tests and benchmarks use this).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig

from epalm.zoo.resolver import resolve


def config_from_dict(model_config: dict[str, Any]) -> PretrainedConfig:
    if "model_type" not in model_config:
        raise ValueError(f"model_config needs a 'model_type' key, got keys {sorted(model_config)}")
    options = dict(model_config)
    return AutoConfig.for_model(options.pop("model_type"), **options)


def load_model(
    auto_cls: Any,
    model: str | None = None,
    model_config: dict[str, Any] | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> torch.nn.Module:
    """``auto_cls.from_pretrained(model)`` or a seeded ``auto_cls.from_config(model_config)``."""
    if (model is None) == (model_config is None):
        raise ValueError(
            "name a frozen model by exactly one of `model` (id or path) or `model_config`"
        )
    if model is not None:
        return auto_cls.from_pretrained(resolve(model), **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return auto_cls.from_config(config_from_dict(model_config), **kwargs)


#: A tokenizer name that stands for epalm's byte-level tokenizer, for tiny random models.
BYTE_TOKENIZER = "epalm-bytes"


def load_tokenizer(name: str | None) -> Any:
    """The tokenizer called ``name`` (hub id, directory, offline name, or ``epalm-bytes``)."""
    if name == BYTE_TOKENIZER:
        from epalm.testing import tiny_tokenizer

        return tiny_tokenizer()
    if name is None:
        raise ValueError("the model is built from model_config: name its tokenizer (tokenizer=...)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(name))
