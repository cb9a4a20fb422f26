"""What ``epalm models list`` shows: every known name, its sources, and whether it is cached."""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub import try_to_load_from_cache

from epalm.presets import encoder_preset, lm_preset, preset_names
from epalm.zoo.cache import problem_with
from epalm.zoo.resolver import offline_entry
from epalm.zoo.sources import find_offline, offline_models


@dataclass
class KnownModel:
    name: str
    kind: str
    sources: str
    cached: str


def known_models(cache_dir: str | None = None) -> list[KnownModel]:
    rows = []
    for source in offline_models():
        entry = offline_entry(source, cache_dir)
        cached = (
            "epalm cache"
            if entry.is_dir() and problem_with(entry) is None
            else _hub_cached(source.hub_id)
        )
        sources = f"hub {source.hub_id}; pip {source.package}=={source.version} ({source.license})"
        rows.append(KnownModel(source.name, source.kind, sources, cached))
    for name, kind in _preset_models():
        if find_offline(name) is None:
            rows.append(KnownModel(name, kind, "hub", _hub_cached(name)))
    return rows


def _preset_models() -> list[tuple[str, str]]:
    # presets built from a config alone (tiny-*) name no model to list
    models = [(lm_preset(n).model, "lm") for n in preset_names("lm") if lm_preset(n).model]
    for name in preset_names("encoder"):
        modality, perceiver = encoder_preset(name)
        if "model" in perceiver.kwargs:
            models.append((perceiver.kwargs["model"], modality))
    return sorted(set(models))


def _hub_cached(repo: str | None) -> str:
    if repo is None:
        return "no"
    return "HF cache" if isinstance(try_to_load_from_cache(repo, "config.json"), str) else "no"


def format_table(rows: list[KnownModel]) -> str:
    header = KnownModel("NAME", "KIND", "SOURCES", "CACHED")
    widths = [max(len(getattr(r, f)) for r in [header, *rows]) for f in ("name", "kind", "cached")]
    return "\n".join(
        f"{r.name:<{widths[0]}}  {r.kind:<{widths[1]}}  {r.cached:<{widths[2]}}  {r.sources}"
        for r in [header, *rows]
    )
