"""Perceivers by name: ``register_perceiver`` adds one, ``build_perceiver`` makes one."""

from __future__ import annotations

import difflib
from typing import Any

from epalm.encoders.base import Perceiver

_PERCEIVERS: dict[str, type[Perceiver]] = {}


def register_perceiver(name: str, cls: type[Perceiver] | None = None):
    """Register ``cls`` under ``name``; usable as a plain call or as a class decorator."""

    def add(perceiver_cls: type[Perceiver]) -> type[Perceiver]:
        if not (isinstance(perceiver_cls, type) and issubclass(perceiver_cls, Perceiver)):
            raise TypeError(
                f"register_perceiver({name!r}): {perceiver_cls!r} is not a Perceiver subclass"
            )
        known = _PERCEIVERS.get(name)
        if known is not None and known is not perceiver_cls:
            raise ValueError(f"perceiver name {name!r} is already taken by {known.__qualname__}")
        perceiver_cls.registry_name = name
        _PERCEIVERS[name] = perceiver_cls
        return perceiver_cls

    return add if cls is None else add(cls)


def get_perceiver_class(name: str) -> type[Perceiver]:
    try:
        return _PERCEIVERS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _PERCEIVERS, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(
            f"unknown perceiver {name!r}.{hint} Known perceivers: {', '.join(sorted(_PERCEIVERS))}. "
            "Add your own with epalm.register_perceiver(name, cls)."
        ) from None


def build_perceiver(name: str, **kwargs: Any) -> Perceiver:
    """Instantiate the perceiver registered as ``name``, frozen."""
    return get_perceiver_class(name)(**kwargs).freeze()


def available_perceivers() -> list[str]:
    return sorted(_PERCEIVERS)
