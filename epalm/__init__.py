"""epalm: give a frozen language model perception by training a tiny connector (eP-ALM)."""

from epalm import encoders  # noqa: F401  (registers the built-in perceivers)
from epalm.config import EPALMConfig
from epalm.connector import LevelProjection, SoftPrompt
from epalm.encoders.base import Perceiver
from epalm.encoders.registry import available_perceivers, build_perceiver, register_perceiver
from epalm.injection import register_decoder_layers
from epalm.model import EPALM

__version__ = "0.1.0"
__all__ = [
    "EPALM",
    "EPALMConfig",
    "LevelProjection",
    "Perceiver",
    "SoftPrompt",
    "__version__",
    "available_perceivers",
    "build_perceiver",
    "register_decoder_layers",
    "register_perceiver",
]
