"""Media decoding on real files of every kind the decoders claim, written here, and on real broken
ones: each broken file raises a MediaError that names it."""

from __future__ import annotations

import importlib.util
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from epalm.data import media
from epalm.data.media import MediaError, load_audio, read_audio, read_image, read_video
from epalm.encoders import build_perceiver
from epalm.testing.perceivers import TINY_WHISPER

HAS_DECORD = importlib.util.find_spec("decord") is not None
BACKENDS = [
    "pyav",
    pytest.param(
        "decord", marks=pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed")
    ),
]


# --- writers -------------------------------------------------------------------------------------
def write_clip(path, codec="libx264", frames=12, pts=None, audio_hz=None):
    """Frame i is a flat grey of level 20 * i (64 x 32: decord needs widths of 64 and up);
    ``pts`` in ms makes the frame rate variable; ``audio_hz`` adds an AAC tone track."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        # every stream must exist before the first packet is muxed
        sound = None if audio_hz is None else container.add_stream("aac", rate=44_100)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(
                np.full((32, 64, 3), 20 * i, np.uint8), format="rgb24"
            )
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if sound is not None:
            encode_audio(container, sound, tone(44_100, hz=audio_hz))
    return path


def encode_audio(container, stream, wave):
    frame = av.AudioFrame.from_ndarray(wave[None], format="flt", layout="mono")
    frame.sample_rate = stream.rate
    container.mux(stream.encode(frame))  # PyAV splits it into the codec's frame size
    container.mux(stream.encode())


def write_audio_pyav(path, wave, rate, codec):
    with av.open(str(path), "w") as container:
        encode_audio(container, container.add_stream(codec, rate=rate), wave)
    return path


def tone(rate, seconds=1.0, hz=1_000.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(wave, rate=16_000):
    return float(np.argmax(np.abs(np.fft.rfft(wave)))) * rate / len(wave)


def levels(frames):
    """The frame indices of ``write_clip`` frames, from their grey levels."""
    return (frames.reshape(len(frames), -1).mean(1) / 20).round().astype(int).tolist()


# --- images --------------------------------------------------------------------------------------
def test_png_modes_decode_to_rgb_uint8(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, np.full((6, 5), 9, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "l.png")
    deep = np.array([[0, 257 * 100, 65535]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "i16.png")
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.ravel().tolist())
    image.save(tmp_path / "p.png", transparency=0)
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")

    expected = {
        "rgba.png": rgb,
        "l.png": np.repeat(rgb[..., :1], 3, axis=-1),
        "i16.png": np.array([[[0] * 3, [100] * 3, [255] * 3]], np.uint8),  # scaled, not clipped
        "p.png": palette[indices],
    }
    for name, want in expected.items():
        got = read_image(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_cmyk_jpeg_decodes_to_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "red.jpg")
    np.testing.assert_allclose(read_image(tmp_path / "red.jpg")[0, 0], [255, 0, 0], atol=4)


def test_jpeg_exif_orientation_rotates_the_pixels(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "a.jpg", exif=exif, quality=95)
    shown = read_image(tmp_path / "a.jpg")
    np.testing.assert_allclose(shown, np.rot90(stored, k=-1), atol=8)  # the left went on top
    assert shown[:20].mean() > 240 and shown[20:].mean() < 15


def test_an_image_is_read_by_content_not_extension(tmp_path):
    Image.new("RGB", (4, 3), (10, 20, 30)).save(tmp_path / "a.png", format="JPEG", quality=100)
    np.testing.assert_allclose(read_image(tmp_path / "a.png")[0, 0], [10, 20, 30], atol=2)


# --- video ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name, codec", [("h264.mp4", "libx264"), ("mpeg4.avi", "mpeg4"), ("vp9.webm", "libvpx-vp9")]
)
def test_video_codecs_decode_middle_frames_at_test(tmp_path, name, codec, backend):
    path = write_clip(tmp_path / name, codec)
    frames = read_video(path, 4, backend=backend)
    assert frames.shape == (4, 32, 64, 3) and frames.dtype == np.uint8
    assert levels(frames) == [1, 4, 7, 10]


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_draws_one_frame_within_each_segment(tmp_path, backend):
    path = write_clip(tmp_path / "a.mp4")
    draws = np.array([levels(read_video(path, 4, train=True, backend=backend)) for _ in range(24)])
    segment = draws // 3  # 12 frames, 4 segments of 3
    assert (segment == np.arange(4)).all()
    assert len({tuple(d) for d in draws}) > 1  # random, not fixed


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_clips_repeat_frames(tmp_path, backend):
    path = write_clip(tmp_path / "a.mp4", frames=2)
    assert levels(read_video(path, 4, backend=backend)) == [0, 0, 1, 1]


def test_variable_frame_rate_samples_by_frame_index(tmp_path):
    pts = [0, 40, 80, 500, 540, 580, 2000, 2040, 2080, 2120, 2160, 2200]  # ms, bursts and gaps
    path = write_clip(tmp_path / "vfr.mp4", pts=pts)
    with av.open(str(path)) as container:
        times = [float(f.time) for f in container.decode(video=0)]
    assert len(set(np.diff(times).round(3))) > 1  # really variable
    assert levels(read_video(path, 4)) == [1, 4, 7, 10]  # by time it would be 1, 6, 8, 10


def test_an_overstated_frame_count_is_resampled_over_decoded_frames(tmp_path, monkeypatch):
    path = write_clip(tmp_path / "a.mp4")
    monkeypatch.setattr(media, "_count_packets", lambda path: 20)
    assert levels(read_video(path, 4)) == [1, 4, 7, 10]


def test_unknown_backend_and_missing_decord_are_setup_errors(tmp_path, monkeypatch):
    path = write_clip(tmp_path / "a.mp4")
    with pytest.raises(ValueError, match="unknown video backend"):
        read_video(path, 4, backend="opencv")
    monkeypatch.setattr(media.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install decord"):
        read_video(path, 4, backend="decord")


# --- audio ---------------------------------------------------------------------------------------
def write_audio(path):
    """A stereo 1 kHz tone at 44.1 kHz, by soundfile or (.mp3, .m4a) PyAV."""
    wave = tone(44_100)
    if path.suffix in (".mp3", ".m4a"):
        codec = "libmp3lame" if path.suffix == ".mp3" else "aac"
        try:
            av.codec.Codec(codec, "w")
        except av.codec.codec.UnknownCodecError:
            pytest.skip(f"this PyAV cannot encode {codec}")
        return write_audio_pyav(path, wave, 44_100, codec)
    soundfile.write(path, np.stack([wave, wave], axis=1), 44_100)
    return path


@pytest.mark.parametrize("name", ["a.wav", "a.flac", "a.ogg", "a.mp3", "a.m4a"])
def test_audio_files_decode_to_mono_resampled_waves(tmp_path, name):
    path = write_audio(tmp_path / name)
    wave, rate = read_audio(path)
    assert rate == 44_100 and wave.ndim == 1 and wave.dtype == np.float32
    resampled = load_audio(path, 16_000)
    assert resampled.dtype == np.float32
    assert abs(len(resampled) - 16_000) < 0.1 * 16_000  # codecs add some priming samples
    assert peak_hz(resampled) == pytest.approx(1_000, abs=2)


def test_resampling_keeps_the_frequency():
    wave = load_audio({"array": tone(44_100), "sampling_rate": 44_100}, 16_000)
    assert wave.shape == (16_000,) and peak_hz(wave) == pytest.approx(1_000, abs=1)


def test_audio_is_padded_or_cut_when_asked():
    wave = tone(16_000)
    assert load_audio(wave, num_samples=20_000)[16_000:].max() == 0
    np.testing.assert_array_equal(load_audio(wave, num_samples=8_000), wave[:8_000])


def test_the_audio_track_of_a_video_file(tmp_path):
    path = write_clip(tmp_path / "talk.mp4", audio_hz=440.0)
    assert levels(read_video(path, 4)) == [1, 4, 7, 10]
    wave = load_audio(path, 16_000)
    assert peak_hz(wave) == pytest.approx(440, abs=2)


# --- broken files --------------------------------------------------------------------------------
def halve(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def png(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        path, format="PNG"
    )
    return path


def jpeg(path):
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path, format="JPEG")
    return path


def wav(path):
    soundfile.write(path, tone(16_000), 16_000, format="WAV")
    return path


def text(path):
    path.write_text("not media at all\n")
    return path


def empty(path):
    path.write_bytes(b"")
    return path


def faststart_mp4(path):
    """An MP4 with its index first: cut in half, the index promises frames that are gone."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        noise = np.random.default_rng(0).integers(0, 256, (60, 32, 64, 3), np.uint8)
        for frame in noise:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


BROKEN = {
    "image": [
        ("truncated.png", lambda p: halve(png(p))),
        ("truncated.jpg", lambda p: halve(jpeg(p))),
        ("empty.png", empty),
        ("wav-named.png", wav),
        ("text.jpg", text),
        ("video.png", lambda p: write_clip(p.with_suffix(".mp4")).rename(p)),
    ],
    "video": [
        ("truncated.mp4", lambda p: halve(write_clip(p))),
        ("truncated-faststart.mp4", lambda p: halve(faststart_mp4(p))),
        ("empty.mp4", empty),
        ("png-named.mp4", png),
        ("wav-named.mp4", wav),
        ("text.mp4", text),
    ],
    "audio": [
        ("truncated.flac", lambda p: halve(write_audio(p))),
        ("truncated.ogg", lambda p: halve(write_audio(p))),
        ("truncated.mp3", lambda p: halve(write_audio(p))),
        ("empty.wav", empty),
        ("png-named.wav", png),
        ("text.wav", text),
        ("silent-video.mp4", write_clip),  # no audio track
    ],
}
DECODERS = {
    "image": read_image,
    "video": lambda path: read_video(path, 4),
    "audio": read_audio,
}


@pytest.mark.parametrize(
    "kind, name, make", [(kind, *case) for kind, cases in BROKEN.items() for case in cases]
)
def test_broken_files_raise_media_errors_naming_them(tmp_path, kind, name, make):
    path = make(tmp_path / name)
    with pytest.raises(MediaError) as raised:
        DECODERS[kind](path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and len(message) > len(f"{path}: ") + 5
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_broken_videos_raise_media_errors_with_either_backend(tmp_path, backend):
    for name, make in BROKEN["video"]:
        path = make(tmp_path / name)
        with pytest.raises(MediaError, match=str(path)):
            read_video(path, 4, backend=backend)


def test_missing_files_raise_media_errors(tmp_path):
    for decode in DECODERS.values():
        with pytest.raises(MediaError, match="no such file"):
            decode(tmp_path / "gone.wav")


# --- SpecAugment ---------------------------------------------------------------------------------
TINY_AST = {
    "model_type": "audio-spectrogram-transformer",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "num_mel_bins": 32,
    "max_length": 64,
    "patch_size": 16,
}


def zero_bands(features, axis):
    """How many rows along ``axis`` are masked (all zero)."""
    other = 1 - axis
    return int((features == 0).all(dim=other).sum())


@pytest.mark.parametrize(
    "name, kwargs, freq_axis",
    [
        ("ast", {"model_config": TINY_AST, "freq_mask": 8, "time_mask": 16}, 1),
        ("whisper", {"model_config": TINY_WHISPER, "freq_mask": 20, "time_mask": 40}, 0),
    ],
)
def test_spec_augment_masks_only_in_training(name, kwargs, freq_axis):
    perceiver = build_perceiver(name, **kwargs)
    key = "input_values" if name == "ast" else "input_features"
    wave = tone(16_000, hz=440.0)
    clean = perceiver.preprocess(wave)[key]
    assert torch.equal(clean, perceiver.preprocess(wave)[key])
    assert zero_bands(clean, freq_axis) == zero_bands(clean, 1 - freq_axis) == 0
    augmented = [perceiver.preprocess(wave, train=True)[key] for _ in range(10)]
    freq = [zero_bands(a, freq_axis) for a in augmented]
    time = [zero_bands(a, 1 - freq_axis) for a in augmented]
    assert max(freq) > 0 and max(time) > 0
    assert max(freq) <= kwargs["freq_mask"] and max(time) <= kwargs["time_mask"]
    perceiver.spec_augment = False
    assert torch.equal(clean, perceiver.preprocess(wave, train=True)[key])
    assert perceiver.config()["freq_mask"] == kwargs["freq_mask"]
