"""``sound-scenes`` and ``sound-sequences``: synthetic sound scenes (16 kHz mono WAV), with
captions and questions.

A scene is a sequence of different events, one per second (two in ``sound-scenes``, three in
``sound-sequences``): a steady tone, 1-3 beeps, a rising or falling chirp, a burst of noise or
silence. Each ordered sequence of different events is equally common, and pitch, beep count and
chirp direction are balanced over the scenes that have them, so no question's answer can be
read from the question. Three events make 540 possible captions (two make 98), in an order that a
pooled text embedding must keep: the harder set for retrieval.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from itertools import permutations
from pathlib import Path

import numpy as np

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

RATE = 16_000  # one second per event
KINDS = ("tone", "beep", "chirp", "noise", "silence")
SOUNDS = ("tone", "beep", "chirp", "noise")  # what "is there a ...?" asks about
PITCHES = {"low": (180.0, 350.0), "high": (1200.0, 2400.0)}  # Hz
ASK = {
    "tone": "is there a tone?",
    "beep": "is there a beep?",
    "chirp": "is there a chirp?",
    "noise": "is there a burst of noise?",
}
FADE = 0.01  # seconds of raised-cosine ramp: no clicks at a sound's edges


@dataclass(frozen=True)
class Scene:
    kinds: tuple[str, ...]  # the events in order, each kind at most once
    asked: str  # the sound "is there a ...?" asks about; present in half the scenes
    tone_pitch: str | None
    beep_pitch: str | None
    beeps: int | None
    chirp: str | None  # "rising" or "falling"
    render_seed: int  # onsets, frequencies, loudness: free of any label

    @property
    def first(self) -> str:
        return self.kinds[0]

    @property
    def last(self) -> str:
        return self.kinds[-1]


def plan(seed: int, split: str, n: int, events: int = 2) -> list[Scene]:
    rng = split_rng(seed, split)
    pairs = balanced(rng, n, tuple(permutations(KINDS, events)))  # ordered, different kinds
    present = balanced(rng, n, (True, False))
    asked = [_asked(rng, pair, p) for pair, p in zip(pairs, present)]
    tone_pitch = _for_scenes_with(rng, pairs, "tone", tuple(PITCHES))
    beep_pitch = _for_scenes_with(rng, pairs, "beep", tuple(PITCHES))
    beeps = _for_scenes_with(rng, pairs, "beep", (1, 2, 3))
    chirp = _for_scenes_with(rng, pairs, "chirp", ("rising", "falling"))
    seeds = rng.integers(2**32, size=n).tolist()
    rows = zip(pairs, asked, tone_pitch, beep_pitch, beeps, chirp, seeds)
    return [Scene(kinds, *rest) for kinds, *rest in rows]


def caption(scene: Scene) -> str:
    return ", then ".join(_describe(scene, kind) for kind in scene.kinds)


def questions(scene: Scene) -> list[tuple[str, str, str]]:
    """(question type, question, answer): order and presence always, details when present."""
    qa = [
        ("first", "what comes first?", scene.first),
        *[("middle", "what comes second?", scene.kinds[1])] * (len(scene.kinds) > 2),
        ("last", "what comes last?", scene.last),
        ("presence", ASK[scene.asked], "yes" if scene.asked in scene.kinds else "no"),
    ]
    if scene.beeps:
        qa.append(("count", "how many beeps are there?", str(scene.beeps)))
        qa.append(("pitch", "are the beeps high or low?", scene.beep_pitch))
    if scene.tone_pitch:
        qa.append(("pitch", "is the tone high or low?", scene.tone_pitch))
    if scene.chirp:
        qa.append(("direction", "is the chirp rising or falling?", scene.chirp))
    return qa


def split_samples(
    seed: int, split: str, n: int, events: int = 2, name: str = "sound-scenes"
) -> list[Sample]:
    """The manifest of a split, without rendering a scene."""
    scenes = plan(seed, split, n, events)
    return [s for i, scene in enumerate(scenes) for s in _samples(scene, split, i, name)]


def render(scene: Scene) -> np.ndarray:
    """The scene's waveform: float32 in [-1, 1], one second (RATE samples) per event."""
    rng = np.random.default_rng(scene.render_seed)
    # a faint floor: silence is not all zeros
    audio = rng.normal(0.0, 0.002, RATE * len(scene.kinds))
    for second, kind in enumerate(scene.kinds):
        start = int(RATE * (second + rng.uniform(0.05, 0.2)))
        sound = _sound(scene, kind, rng)
        audio[start : start + len(sound)] += sound  # every sound ends within its second
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray) -> None:
    import soundfile  # lazily: listing the datasets should not load libsndfile

    soundfile.write(str(path), audio, RATE, subtype="PCM_16")


def build(
    out_dir: Path, seed: int, sizes: dict[str, int], *, events: int, name: str, card: str
) -> Built:
    (out_dir / "audio").mkdir()
    samples = synthesize(
        out_dir,
        seed,
        sizes,
        name=name,
        plan=partial(plan, events=events),
        write=lambda path, item: write_wav(path, render(item)),
        media=_media,
        samples=partial(_samples, name=name),
    )
    provenance = {
        "generator": __name__,
        "sample_rate": RATE,
        "seconds": float(events),
        "format": "WAV, mono, 16-bit PCM",
        "license": "Apache-2.0 (generated by epalm)",
    }
    return Built(samples, provenance, card)


def _asked(rng: np.random.Generator, pair: tuple[str, ...], present: bool) -> str:
    """A sound in the scene or one missing from it; by symmetry each is asked as often with
    "yes" as with "no"."""
    options = [k for k in SOUNDS if (k in pair) == present]
    return options[int(rng.integers(len(options)))]


def _for_scenes_with(
    rng: np.random.Generator, pairs: list[tuple[str, ...]], kind: str, values: tuple
) -> list:
    """Values balanced over the scenes that have ``kind``; None for the others."""
    chosen = iter(balanced(rng, sum(kind in p for p in pairs), values))
    return [next(chosen) if kind in p else None for p in pairs]


def _describe(scene: Scene, kind: str) -> str:
    if kind == "tone":
        return f"a {scene.tone_pitch} tone"
    if kind == "beep":
        count = "a" if scene.beeps == 1 else NUMBER_WORDS[scene.beeps]
        return f"{count} {scene.beep_pitch} beep{'s' * (scene.beeps > 1)}"
    if kind == "chirp":
        return f"a {scene.chirp} chirp"
    return "a burst of noise" if kind == "noise" else "silence"


def _sound(scene: Scene, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One event's samples, at most 0.75 s long."""
    loudness = rng.uniform(0.25, 0.5)
    if kind == "tone":
        return loudness * _tone(rng.uniform(*PITCHES[scene.tone_pitch]), rng.uniform(0.5, 0.75))
    if kind == "beep":
        beep = _tone(rng.uniform(*PITCHES[scene.beep_pitch]), 0.1)
        gap = np.zeros(int(0.12 * RATE))
        return loudness * np.concatenate(
            [beep, *[x for _ in range(scene.beeps - 1) for x in (gap, beep)]]
        )
    if kind == "chirp":
        low, high = rng.uniform(220, 300), rng.uniform(2000, 2800)
        start, end = (low, high) if scene.chirp == "rising" else (high, low)
        return loudness * _sweep(start, end, rng.uniform(0.5, 0.7))
    if kind == "noise":
        return _fade(rng.normal(0.0, 0.3 * loudness, int(rng.uniform(0.3, 0.6) * RATE)))
    return np.zeros(0)


def _tone(frequency: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return _fade(np.sin(2 * np.pi * frequency * t))


def _sweep(start: float, end: float, seconds: float) -> np.ndarray:
    """Exponential sweep: equal time per octave, as a rising or falling pitch is heard."""
    t = np.arange(int(seconds * RATE)) / RATE
    rate = np.log(end / start) / seconds
    return _fade(np.sin(2 * np.pi * start * np.expm1(rate * t) / rate))


def _fade(sound: np.ndarray) -> np.ndarray:
    ramp = np.sin(np.linspace(0.0, np.pi / 2, int(FADE * RATE))) ** 2
    sound = sound.copy()
    sound[: len(ramp)] *= ramp
    sound[len(sound) - len(ramp) :] *= ramp[::-1]
    return sound


def _samples(scene: Scene, split: str, index: int, name: str = "sound-scenes") -> list[Sample]:
    prefix = f"{name}-{split}-{index:05d}"
    return media_samples(
        prefix, split, "audio", _media(split, index), caption(scene), questions(scene)
    )


def _media(split: str, index: int) -> str:
    return f"audio/{split}-{index:05d}.wav"


CARD = """\
Synthetic sound scenes: 2 s, 16 kHz mono, 16-bit WAV.

A scene is two events, one in each second, starting 50-200 ms into it: a steady tone (low
180-350 Hz or high 1.2-2.4 kHz), one to three short beeps (same pitches), a rising or falling
chirp (exponential sweep between about 250 Hz and 2.4 kHz), a burst of white noise, or
silence (a faint noise floor runs under the whole scene). Each ordered pair of different events
is equally common; pitch, beep count and chirp direction are balanced over the scenes that have
them; frequencies, onsets and loudness come from a per-scene seed.

Per scene: one caption ("two high beeps, then a falling chirp") and questions: what comes
first, what comes last, whether a given sound is present (yes in half the scenes), and, when
the scene has them, the beep count ("1" to "3"), the pitch of the beeps or tone (high / low)
and the chirp's direction (rising / falling).
"""

SEQUENCES_CARD = """\
Synthetic sound sequences: 3 s, 16 kHz mono, 16-bit WAV.

As sound-scenes, with three different events, one in each second: each ordered triple of
different events is equally common (60 triples), and the captions name all three in order
("a low tone, then two high beeps, then silence"). Questions as in sound-scenes, plus what
comes second.
"""

DATASET = Embedded(
    name="sound-scenes",
    modality="audio",
    summary="synthetic 2 s scenes of tones, beeps, chirps, noise and silence: order, count, pitch",
    version=1,
    sizes={
        "default": {"train": 600, "val": 100, "test": 100},
        "tiny": {"train": 4, "val": 2, "test": 2},
    },
    build=partial(build, events=2, name="sound-scenes", card=CARD),
)

SEQUENCES = Embedded(
    name="sound-sequences",
    modality="audio",
    summary="synthetic 3 s sequences of three sounds: sound-scenes made harder for retrieval",
    version=1,
    sizes={
        "default": {"train": 1200, "val": 200, "test": 200},
        "tiny": {"train": 4, "val": 2, "test": 2},
    },
    build=partial(build, events=3, name="sound-sequences", card=SEQUENCES_CARD),
)
