"""Perceivers: frozen unimodal encoders, by name. Importing this registers the built-ins."""

from epalm.encoders import audio, image, video
from epalm.encoders.base import Perceiver
from epalm.encoders.registry import (
    available_perceivers,
    build_perceiver,
    get_perceiver_class,
    register_perceiver,
)

__all__ = [
    "Perceiver",
    "audio",
    "available_perceivers",
    "build_perceiver",
    "get_perceiver_class",
    "image",
    "register_perceiver",
    "video",
]
