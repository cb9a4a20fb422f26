"""Where frozen models come from: hub ids, local directories, and offline sources."""

from epalm._lazy import lazy_exports

_EXPORTS = {
    "cache_root": "epalm.zoo.cache",
    "config_from_dict": "epalm.zoo.loading",
    "load_model": "epalm.zoo.loading",
    "ModelNotFoundError": "epalm.zoo.resolver",
    "build_offline": "epalm.zoo.resolver",
    "resolve": "epalm.zoo.resolver",
    "OfflineModel": "epalm.zoo.sources",
    "find_offline": "epalm.zoo.sources",
    "offline_models": "epalm.zoo.sources",
    "register_offline_model": "epalm.zoo.sources",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
