"""``shapes-video``: synthetic H.264 clips of moving shapes, with captions and questions.

A clip shows one to three shapes of one kind and colour moving together in one direction,
slowly or quickly. Each attribute is balanced within a split and drawn independently of the
others, so every question's answers are uniform and the question alone gives nothing away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from epalm.data.embedded.common import (
    NUMBER_WORDS,
    Built,
    Embedded,
    balanced,
    media_samples,
    split_rng,
    synthesize,
)
from epalm.data.manifest import Sample

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (225, 35, 35),
    "green": (40, 175, 60),
    "blue": (45, 95, 240),
    "yellow": (240, 215, 40),
    "purple": (155, 60, 210),
    "white": (240, 240, 240),
}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS = {"slow": 1.0, "fast": 2.5}  # pixels per frame: 15 vs 37 pixels over a clip
COUNTS = (1, 2, 3)
FRAMES, SIZE, FPS = 16, 64, 8
SUPERSAMPLE = 4  # draw larger, then shrink: smooth edges and sub-pixel motion


@dataclass(frozen=True)
class Clip:
    shape: str
    color: str
    direction: str
    speed: str
    count: int
    render_seed: int  # sizes, positions and background: free of any label


def plan(seed: int, split: str, n: int) -> list[Clip]:
    rng = split_rng(seed, split)
    options = (SHAPES, tuple(COLORS), tuple(DIRECTIONS), tuple(SPEEDS), COUNTS)
    attributes = [balanced(rng, n, values) for values in options]
    seeds = rng.integers(2**32, size=n).tolist()
    return [Clip(*values, render_seed=s) for *values, s in zip(*attributes, seeds)]


def caption(clip: Clip) -> str:
    several = clip.count > 1
    count = NUMBER_WORDS[clip.count] if several else "a"
    adverb = "quickly" if clip.speed == "fast" else "slowly"
    return f"{count} {clip.color} {clip.shape}{'s' * several} moving {clip.direction} {adverb}"


def questions(clip: Clip) -> list[tuple[str, str, str]]:
    """(question type, question, answer); the wording follows the count, the answers never do."""
    one = clip.count == 1
    return [
        ("shape", "what shape is moving?" if one else "what shape are the moving objects?", clip.shape),
        ("color", "what color is the shape?" if one else "what color are the shapes?", clip.color),
        ("direction", "which way is it moving?" if one else "which way are they moving?", clip.direction),
        ("speed", "is it moving fast or slow?" if one else "are they moving fast or slow?", clip.speed),
        ("count", "how many shapes are there?", str(clip.count)),
    ]  # fmt: skip


def split_samples(seed: int, split: str, n: int) -> list[Sample]:
    """The manifest of a split, without rendering a clip."""
    return [s for i, clip in enumerate(plan(seed, split, n)) for s in _samples(clip, split, i)]


def render(clip: Clip) -> np.ndarray:
    """The clip's frames: uint8 array (FRAMES, SIZE, SIZE, 3)."""
    rng = np.random.default_rng(clip.render_seed)
    radius = rng.uniform(5.0, 7.0)
    background = (int(rng.integers(10, 60)),) * 3  # dark gray: no hue to confuse with the shape's
    step = SPEEDS[clip.speed] * rng.uniform(0.9, 1.1)
    travel = step * (FRAMES - 1)
    dx, dy = DIRECTIONS[clip.direction]
    starts = _start_positions(rng, clip.count, radius, travel, dx + dy)
    frames = []
    for t in range(FRAMES):
        centres = [(a + (dx + dy) * step * t, c) for a, c in starts]  # (along, across) the motion
        centres = [(a, c) if dx else (c, a) for a, c in centres]
        frames.append(_draw(clip, centres, radius, background))
    return np.stack(frames)


def write_mp4(path: Path, frames: np.ndarray) -> None:
    import av  # lazily: listing the datasets should not load FFmpeg

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        stream.thread_count = 1  # tiny frames gain nothing from threads
        for frame in frames:
            container.mux(stream.encode(_yuv420p(av, frame)))
        container.mux(stream.encode())


def _yuv420p(av, frame: np.ndarray):
    """Convert before encoding: handing libx264 an rgb24 frame to convert itself gives
    different bytes from run to run, while a converted copy encodes deterministically."""
    rgb = av.VideoFrame.from_ndarray(frame, format="rgb24")
    return av.VideoFrame.from_ndarray(rgb.reformat(format="yuv420p").to_ndarray(), format="yuv420p")


def build(out_dir: Path, seed: int, sizes: dict[str, int]) -> Built:
    (out_dir / "videos").mkdir()
    samples = synthesize(
        out_dir,
        seed,
        sizes,
        name="shapes-video",
        plan=plan,
        write=lambda path, item: write_mp4(path, render(item)),
        media=_media,
        samples=_samples,
    )
    provenance = {
        "generator": __name__,
        "frames": FRAMES,
        "fps": FPS,
        "resolution": f"{SIZE}x{SIZE}",
        "codec": "H.264 (libx264, crf 18, yuv420p) in MP4",
        "license": "Apache-2.0 (generated by epalm)",
    }
    return Built(samples, provenance, CARD)


def _samples(clip: Clip, split: str, index: int) -> list[Sample]:
    prefix = f"shapes-video-{split}-{index:05d}"
    return media_samples(
        prefix, split, "video", _media(split, index), caption(clip), questions(clip)
    )


def _media(split: str, index: int) -> str:
    return f"videos/{split}-{index:05d}.mp4"


def _start_positions(
    rng: np.random.Generator, count: int, radius: float, travel: float, sign: int
) -> list[tuple[float, float]]:
    """(along, across) the motion per shape: each in its own lane, never leaving the frame."""
    margin = 1.25 * radius + 1  # the triangle's corners reach 1.25 radii from its centre
    low = margin + (travel if sign < 0 else 0)
    high = SIZE - margin - (travel if sign > 0 else 0)
    lane = SIZE / count
    wobble = max(0.0, lane / 2 - margin)
    return [
        (rng.uniform(low, high), (k + 0.5) * lane + rng.uniform(-wobble, wobble))
        for k in range(count)
    ]


def _draw(
    clip: Clip, centres: list[tuple[float, float]], radius: float, background: tuple
) -> np.ndarray:
    big = SIZE * SUPERSAMPLE
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    r = radius * SUPERSAMPLE
    for x, y in centres:
        x, y = x * SUPERSAMPLE, y * SUPERSAMPLE
        color = COLORS[clip.color]
        if clip.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=color)
        elif clip.shape == "square":
            side = 0.9 * r  # about the circle's area
            draw.rectangle((x - side, y - side, x + side, y + side), fill=color)
        else:
            corner = 1.25 * r  # pointing up, about the circle's extent
            points = [(x + corner * math.cos(a), y - corner * math.sin(a)) for a in _TRIANGLE]
            draw.polygon(points, fill=color)
    return np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BOX))


_TRIANGLE = (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)

CARD = """\
Synthetic clips of moving shapes: 16 frames at 8 fps (2 s), 64x64, H.264 in MP4.

Each clip shows 1-3 shapes (circle, square or triangle) of one color (red, green, blue,
yellow, purple or white) moving together left, right, up or down, slowly (about 1 pixel a
frame) or quickly (about 2.5). Each attribute is balanced within a split and drawn
independently of the others; sizes, start positions, speed jitter and the dark-gray
background come from a per-clip seed.

Per clip: one caption ("two red squares moving left quickly") and five questions, one per
type: shape, color, direction, speed (fast / slow) and count ("1" to "3").
"""

DATASET = Embedded(
    name="shapes-video",
    modality="video",
    summary="synthetic clips of 1-3 moving shapes: shape, color, direction, speed, count",
    version=1,
    sizes={
        "default": {"train": 600, "val": 100, "test": 100},
        "tiny": {"train": 4, "val": 2, "test": 2},
    },
    build=build,
)
