"""epalm: give a frozen language model perception by training a tiny connector (eP-ALM, or one
that pools and fuses the encoder's tokens), or small modules inside it (VL-Adapter)."""

from epalm._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "EPALM": "epalm.model",
    "EPALMConfig": "epalm.config",
    "Connector": "epalm.connectors",
    "LevelProjection": "epalm.connectors",
    "SoftPrompt": "epalm.connectors",
    "register_connector": "epalm.connectors",
    "Perceiver": "epalm.encoders.base",
    "available_perceivers": "epalm.encoders.registry",
    "build_perceiver": "epalm.encoders.registry",
    "register_perceiver": "epalm.encoders.registry",
    "register_decoder_layers": "epalm.injection",
    "AdapterConfig": "epalm.config",
    "register_adapter": "epalm.adapters",
    "register_architecture": "epalm.adapters",
}
__all__ = ["__version__", *_EXPORTS]
__getattr__ = lazy_exports(__name__, _EXPORTS)
