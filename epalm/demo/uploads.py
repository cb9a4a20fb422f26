"""Uploaded files, checked and decoded before a model sees them. Every problem becomes an
``UploadError`` whose message a person can act on: it names the file as they uploaded it (not
the server's copy) and says what is wrong."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epalm.data.dataset import decode
from epalm.data.media import MediaError, media_duration
from epalm.encoders.base import Perceiver

KIND = {"image": "an image", "video": "a video", "audio": "a sound"}


class UploadError(ValueError):
    """An upload the demo cannot use; the message is for the person who uploaded it."""


@dataclass(frozen=True)
class Limits:
    max_file_mb: float
    max_seconds: float  # video and audio


def read_upload(path: str | os.PathLike, perceiver: Perceiver, limits: Limits) -> Any:
    """The file decoded for ``perceiver``, after checking the length of video and audio (its
    size was checked as it arrived: ``check_size``)."""
    path = Path(path)
    name, kind = path.name, perceiver.modality
    try:
        if kind in ("video", "audio"):
            seconds = media_duration(path)
            if seconds is not None and seconds > limits.max_seconds:
                raise UploadError(
                    f"{name} lasts {seconds:.1f} s; this demo takes {kind} up to "
                    f"{limits.max_seconds:g} s. Please upload a shorter clip."
                )
        return decode(path, perceiver, train=False)
    except MediaError as err:
        reason = str(err).replace(f"{path}: ", "").replace(str(path), name)  # no server paths
        raise UploadError(unreadable(name, kind, reason)) from None


def check_size(path: Path, kind: str, limits: Limits, name: str | None = None) -> None:
    """An UploadError for an empty file or one over the size limit."""
    name = name or path.name
    size = path.stat().st_size if path.is_file() else 0
    if size == 0:
        raise UploadError(f"{name} is empty (0 bytes); please upload {KIND.get(kind, 'a file')}.")
    if size / 1e6 > limits.max_file_mb:
        raise UploadError(
            f"{name} is {size / 1e6:.1f} MB; this demo takes files up to {limits.max_file_mb:g} MB."
        )


def unreadable(name: str, kind: str, reason: str) -> str:
    """The message for a file that does not decode as ``kind``."""
    return (
        f"{name} could not be read as {KIND.get(kind, kind)} ({reason}). Please try another file."
    )
