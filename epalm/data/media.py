"""Media decoding, in one place: images (Pillow), video (PyAV, or decord), audio (soundfile, PyAV).

Every decoder turns a file into plain arrays (RGB uint8 images and frames, mono float32 waves)
and every failure into a ``MediaError`` naming the file and the reason: a missing, empty,
truncated, corrupt or unsupported file, or one of the wrong kind (a WAV given as an image).
Perceivers call the ``load_*`` functions, which also take media already in memory.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

SAMPLING_RATE = 16_000
VIDEO_BACKENDS = ("pyav", "decord")
# A header's frame or sample count is checked, never sampled by: finding less than this share of
# it means a truncated file (the slack allows for estimates, e.g. in headerless VBR MP3s).
HEADER_SLACK = 0.9


class MediaError(ValueError):
    """A media file that cannot be decoded; the message names the file and the reason."""


def check_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or a MediaError when it is missing, not a file, or empty."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    if not path.is_file():
        raise MediaError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    return path


@contextmanager
def decoding(path: Path, kind: str) -> Iterator[None]:
    """Turn any decoder exception (PIL, PyAV, soundfile, decord) into a MediaError."""
    try:
        yield
    except MediaError:
        raise
    except Exception as err:
        # FFmpeg errors repeat the path in str(err); their strerror is the reason alone
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise MediaError(f"{path}: cannot decode {kind}: {reason}") from err


def media_duration(path: str | os.PathLike) -> float | None:
    """A video or audio file's length in seconds, as its header states it (None: it does not)."""
    import av

    path = check_file(path)
    with decoding(path, "media"), av.open(str(path)) as container:
        if container.duration is not None:
            return container.duration / av.time_base
        stated = [float(s.duration * s.time_base) for s in container.streams if s.duration]
        return max(stated, default=None)


# --- images ----------------------------------------------------------------------------------
def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file -> upright (EXIF orientation applied) RGB ``[H, W, 3]`` uint8."""
    path = check_file(path)
    with decoding(path, "image"):
        try:
            image = Image.open(path)
        except UnidentifiedImageError:
            raise MediaError(f"{path}: not an image (no format Pillow knows)") from None
        with image:
            image.load()  # decode now: a truncated file fails here, inside the error handling
            return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB ``[H, W, 3]`` uint8 (alpha is dropped, palettes expanded)."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        # 16-bit samples: convert("RGB") would clip them at 255 instead of scaling
        gray = (np.clip(np.asarray(image), 0, 65535) // 257).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode == "P":
        image = image.convert("RGBA")  # palette transparency is only honoured via RGBA
    return np.asarray(image.convert("RGB"))


def load_image(media: Any) -> torch.Tensor:
    """A path, PIL image, ``[H, W(, C)]`` array or ``[(C,) H, W]`` tensor -> RGB ``[3, H, W]``.

    Arrays and tensors keep their dtype (uint8, or float in [0, 1]).
    """
    if isinstance(media, (str, os.PathLike)):
        media = read_image(media)
    if isinstance(media, Image.Image):
        media = to_rgb(media)
    if isinstance(media, np.ndarray):
        media = torch.from_numpy(np.array(media))  # a copy: PIL arrays are read-only
        media = media.permute(2, 0, 1) if media.ndim == 3 else media
    if not isinstance(media, torch.Tensor):
        raise TypeError(f"cannot read an image from {type(media).__name__}")
    if media.ndim == 2:
        media = media.unsqueeze(0)
    # grayscale -> RGB; drop alpha
    return media.expand(3, -1, -1) if media.shape[0] == 1 else media[:3]


# --- video -----------------------------------------------------------------------------------
def segment_indices(total: int, num: int, *, train: bool = False) -> list[int]:
    """Split ``total`` frames into ``num`` equal segments and take the middle frame of each (a
    random one in training). With fewer frames than segments, frames repeat in order."""
    if total < 1:
        raise ValueError("cannot sample frames from an empty clip")
    edges = torch.linspace(0, total, num + 1, dtype=torch.float64)
    where = torch.rand(num) if train else torch.full((num,), 0.5)  # position within a segment
    position = edges[:-1] + (edges[1:] - edges[:-1]) * where
    return position.floor().long().clamp(0, total - 1).tolist()


def read_video(
    path: str | os.PathLike, num_frames: int, *, train: bool = False, backend: str = "pyav"
) -> np.ndarray:
    """Decode ``num_frames`` segment-sampled RGB frames ``[T, H, W, 3]`` uint8.

    Frames are sampled by index over the frames that really decode (variable frame rates do
    not matter); ``backend`` is "pyav" or "decord" (optional: ``pip install decord``).
    """
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {VIDEO_BACKENDS}")
    if backend == "decord" and importlib.util.find_spec("decord") is None:
        # a missing optional backend is a setup error, not a bad file
        raise ImportError("backend='decord' needs decord: pip install decord")
    read = _read_video_decord if backend == "decord" else _read_video_pyav
    path = check_file(path)
    with decoding(path, "video"):
        return read(path, num_frames, train)


def _read_video_pyav(path: Path, num_frames: int, train: bool) -> np.ndarray:
    # Headers may lack or misstate the frame count: count packets (cheap, nothing decoded),
    # then, should fewer frames decode than that, sample again over those that did.
    total = _count_packets(path)
    wanted = segment_indices(_at_least_one(total, path), num_frames, train=train)
    frames, decoded = _decode_frames(path, wanted)
    if len(frames) < len(set(wanted)):
        wanted = segment_indices(_at_least_one(decoded, path), num_frames, train=train)
        frames, _ = _decode_frames(path, wanted)
    return np.stack([frames[i] for i in wanted])


def _at_least_one(frames: int, path: Path) -> int:
    if frames < 1:
        raise MediaError(f"{path}: no video frame could be decoded")
    return frames


def _video_stream(container: Any, path: Path) -> Any:
    """The first real video stream; a still image or an audio file is the wrong kind."""
    from av.stream import Disposition

    fmt = container.format.name
    if fmt == "image2" or fmt.endswith("_pipe"):  # FFmpeg opens images as 1-frame videos
        raise MediaError(f"{path}: a still image ({fmt}), not a video")
    # skip cover art: an MP3 with a picture has a one-frame "video" stream
    videos = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    if not videos:
        raise MediaError(f"{path}: no video stream (it holds {_stream_kinds(container)})")
    return videos[0]


def _stream_kinds(container: Any) -> str:
    return ", ".join(sorted({s.type for s in container.streams})) or "nothing"


def _count_packets(path: Path) -> int:
    import av  # only video and compressed audio need it

    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        promised = stream.frames  # 0 where the container does not say
        total = sum(1 for packet in container.demux(stream) if packet.size)
    if total < HEADER_SLACK * promised:  # e.g. an MP4 cut short after its index
        raise MediaError(f"{path}: truncated video: {total} of {promised} indexed frames present")
    return total


def _decode_frames(path: Path, wanted: Sequence[int]) -> tuple[dict[int, np.ndarray], int]:
    """The frames at the ``wanted`` indices as RGB arrays, and how many frames were decoded
    (up to the last one wanted)."""
    import av

    keep, last, decoded, frames = set(wanted), max(wanted), 0, {}
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            decoded = index + 1
            if index in keep:
                frames[index] = frame.to_ndarray(format="rgb24")  # converts any pixel format
            if index == last:
                break
    return frames, decoded


def _read_video_decord(path: Path, num_frames: int, train: bool) -> np.ndarray:
    import decord

    # decord counts frames from the index it builds when opening, not from the header
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    wanted = segment_indices(_at_least_one(len(reader), path), num_frames, train=train)
    return reader.get_batch(wanted).asnumpy()


def sample_frames(
    media: Any, num_frames: int, *, train: bool = False, backend: str = "pyav"
) -> Sequence[Any]:
    """A video path, a sequence of frames, ``[T, H, W, 3]`` array or ``[T, 3, H, W]`` tensor ->
    ``num_frames`` of its frames (still raw: each one is anything ``load_image`` reads)."""
    if isinstance(media, (str, os.PathLike)):
        return read_video(media, num_frames, train=train, backend=backend)
    return [media[i] for i in segment_indices(len(media), num_frames, train=train)]


def load_clip(
    media: Any, num_frames: int, *, train: bool = False, backend: str = "pyav"
) -> torch.Tensor:
    """Raw video -> ``[num_frames, 3, H, W]`` (frames must share one size)."""
    frames = sample_frames(media, num_frames, train=train, backend=backend)
    return torch.stack([load_image(frame) for frame in frames])


# --- audio -----------------------------------------------------------------------------------
def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """An audio file, or a video file's audio track -> mono float32 wave and its rate.

    soundfile reads WAV, FLAC, OGG, MP3 (libsndfile >= 1.1) and the like; formats it does not
    know (AAC, M4A, Opus in WebM, the audio of an MP4 ...) go to PyAV.
    """
    import soundfile

    path = check_file(path)
    with decoding(path, "audio"):
        try:
            sound = soundfile.SoundFile(path)
        except soundfile.LibsndfileError as err:
            # 1: unrecognised format, 4: unsupported encoding; anything else is a broken file
            if err.code not in (1, 4):
                raise
            return _read_audio_pyav(path)
        with sound:
            wave = sound.read(dtype="float32", always_2d=True)
            promised, rate = sound.frames, sound.samplerate
        # libsndfile returns what a truncated MP3 holds without complaint; its header does not
        if len(wave) < HEADER_SLACK * promised:
            raise MediaError(f"{path}: truncated audio: {len(wave)} of {promised} samples decoded")
        return _mono(wave.T, path), rate


def _read_audio_pyav(path: Path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio stream (it holds {_stream_kinds(container)})")
        stream = container.streams.audio[0]
        to_float = av.AudioResampler(format="fltp")  # planar float32, channels and rate kept
        frames = [f for frame in container.decode(stream) for f in to_float.resample(frame)]
        frames += to_float.resample(None)  # flush
    if not frames:
        raise MediaError(f"{path}: no audio could be decoded")
    wave = np.concatenate([f.to_ndarray() for f in frames], axis=1)  # [channels, samples]
    return _mono(wave, path), frames[0].sample_rate


def _mono(wave: np.ndarray, path: Path) -> np.ndarray:
    """``[channels, samples]`` -> their mean."""
    if wave.shape[1] == 0:
        raise MediaError(f"{path}: no audio samples")
    return wave.mean(axis=0, dtype=np.float32)


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) from ``rate`` to ``target`` Hz."""
    from scipy.signal import resample_poly  # only off-rate audio needs scipy

    g = math.gcd(int(rate), int(target))
    return resample_poly(wave, int(target) // g, int(rate) // g).astype(np.float32)


def load_audio(
    media: Any, sampling_rate: int = SAMPLING_RATE, *, num_samples: int | None = None
) -> np.ndarray:
    """A path, ``{"array", "sampling_rate"}`` dict (HF datasets) or an array already at
    ``sampling_rate`` -> mono float32 waveform at ``sampling_rate``, zero-padded or cut to
    ``num_samples`` when given."""
    rate = sampling_rate
    if isinstance(media, (str, os.PathLike)):
        media, rate = read_audio(media)
    elif isinstance(media, dict):
        media, rate = media["array"], media["sampling_rate"]
    wave = np.asarray(media, dtype=np.float32)
    if wave.ndim == 2:  # channels are the short axis: [samples, channels] or [channels, samples]
        wave = wave.mean(axis=int(np.argmin(wave.shape)))
    if wave.ndim != 1:
        raise ValueError(f"expected mono or multichannel audio, got shape {wave.shape}")
    if rate != sampling_rate:
        wave = resample(wave, rate, sampling_rate)
    if num_samples is not None:
        wave = np.pad(wave[:num_samples], (0, max(0, num_samples - len(wave))))
    return wave
