"""``easy-vqa``: the easy-VQA dataset (synthetic shapes, 64x64 PNG), from its PyPI wheel.

The wheel (MIT, 3.2 MB) holds 4,000 train and 1,000 test images, each one shape (circle,
rectangle or triangle) in one of eight colors, and 48,248 questions with 13 answers. It is read
straight from the zip, never installed. A seeded 10% of its train images become val; its test
stays test. Captions ("a blue circle") come from what each image's questions and answers
reveal; where they leave the color or shape open, the pixels give it (easy-VQA paints shapes in
exact named colors, and its three shapes differ in outline), and the build checks the pixel
reading against every image whose questions do tell. Its yes/no questions, whose wording gives
the answer away, are replaced by balanced ones (``balanced_yes_no``).
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from epalm.data.embedded.common import SPLITS, Built, Embedded, balanced, media_samples, split_rng
from epalm.data.manifest import Sample
from epalm.zoo.fetch import download_wheel

PACKAGE, VERSION, LICENSE = "easy-vqa", "1.0", "MIT"
SHA256 = "fcb51b309b78c7b00f97b64cdbcbcf5c105f94da1b39c0796cee5a787c4f650f"
ORIGINAL = "https://github.com/vzhou842/easy-VQA"
DATA = "easy_vqa/data"
PALETTE = {  # the exact colors easy-VQA paints its shapes in (its "green" is pure green)
    "black": (0, 0, 0),
    "blue": (0, 0, 255),
    "brown": (165, 42, 42),
    "gray": (128, 128, 128),
    "green": (0, 255, 0),
    "red": (255, 0, 0),
    "teal": (0, 128, 128),
    "yellow": (255, 255, 0),
}
COLORS = tuple(PALETTE)
SHAPES = ("circle", "rectangle", "triangle")
VAL_FRACTION = 0.1


class EasyVQAError(RuntimeError):
    """The easy-VQA data does not read as expected (it is pinned, so this is a bug)."""


def build(out_dir: Path, seed: int, sizes: dict[str, int]) -> Built:
    with tempfile.TemporaryDirectory(prefix="epalm-fetch-") as scratch:
        wheel = download_wheel(PACKAGE, VERSION, SHA256, Path(scratch))
        with zipfile.ZipFile(wheel) as archive:
            return _build(archive, out_dir, seed, sizes)


def attributes_from_questions(qa: list[tuple[str, str]]) -> dict[str, str]:
    """The color and shape that an image's (question, answer) pairs reveal: named in an answer,
    named in a question whose answer is about the same shape, affirmed by a yes/no question, or
    the one option every other was denied. Either may stay unknown."""
    known, denied = {}, defaultdict(set)
    for question, answer in qa:
        words = question.rstrip("?").split()
        named = {_attribute(w): w for w in words if _attribute(w)}
        if answer in ("yes", "no"):
            ((attribute, value),) = named.items()  # a yes/no question names one color or shape
            if (answer == "yes") == ("not" in words or "no" in words):
                denied[attribute].add(value)
                continue
        else:
            named[_attribute(answer)] = answer  # "what color is the triangle?" blue
        for attribute, value in named.items():
            if known.setdefault(attribute, value) != value:
                raise EasyVQAError(f"questions disagree on the {attribute}: {qa}")
    for attribute, options in (("color", COLORS), ("shape", SHAPES)):
        left = set(options) - denied[attribute]
        if attribute not in known and len(left) == 1:
            known[attribute] = left.pop()
    return known


def attributes_from_pixels(png: bytes) -> dict[str, str]:
    """Color: the named color most pixels have exactly. Shape: easy-VQA's triangles point up, so
    most of their area lies in their lower half; its rectangles are axis-aligned, so every inner
    row is equally wide; anything else is a circle."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int64)
    painted = {c: int((rgb == PALETTE[c]).all(-1).sum()) for c in COLORS}
    color = max(painted, key=painted.get)
    if not painted[color]:
        raise EasyVQAError("no pixel has one of easy-VQA's colors")
    background = np.median(rgb.reshape(-1, 3), axis=0)  # the shape covers at most a quarter
    contrast = np.abs(np.subtract(PALETTE[color], background)).sum()
    mask = np.abs(rgb - background).sum(-1) > contrast / 2
    rows, cols = np.nonzero(mask)
    widths = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].sum(1)
    half = len(widths) // 2
    if widths[:half].sum() < 0.7 * widths[len(widths) - half :].sum():
        shape = "triangle"
    elif (widths[1:-1] == widths.max()).all():
        shape = "rectangle"
    else:
        shape = "circle"
    return {"color": color, "shape": shape}


def _build(archive: zipfile.ZipFile, out_dir: Path, seed: int, sizes: dict[str, int]) -> Built:
    questions = {part: _questions(archive, part) for part in ("train", "test")}
    images = _split_images(questions, seed, sizes)
    samples, from_pixels = {}, 0
    for split, items in images.items():
        (out_dir / "images" / split).mkdir(parents=True)
        found = []
        for part, image in tqdm(items, desc=f"easy-vqa {split}", unit="image"):
            png = archive.read(f"{DATA}/{part}/images/{image}.png")
            (out_dir / "images" / split / f"{image}.png").write_bytes(png)
            attributes, filled = _attributes(questions[part][image], png)
            from_pixels += filled
            found.append(attributes)
        rng = np.random.default_rng([seed, SPLITS.index(split), 7])
        asked = balanced_yes_no(rng, found)
        samples[split] = []
        for (part, image), attributes, yes_no in zip(items, found, asked, strict=True):
            qa = [(q, a) for q, a in questions[part][image] if a not in ("yes", "no")] + [yes_no]
            media = f"images/{split}/{image}.png"
            samples[split] += _samples(split, image, media, attributes, qa)
    (out_dir / "LICENSE").write_bytes(archive.read(f"easy_vqa-{VERSION}.dist-info/LICENSE"))
    provenance = {
        "package": PACKAGE,
        "version": VERSION,
        "wheel_sha256": SHA256,
        "license": LICENSE,
        "original": ORIGINAL,
        "splits": f"val: a seeded {VAL_FRACTION:.0%} of easy-VQA's train images; test: its test",
        "captions_completed_from_pixels": from_pixels,
    }
    return Built(samples, provenance, _card(from_pixels))


def balanced_yes_no(
    rng: np.random.Generator, images: list[dict[str, str]]
) -> list[tuple[str, str]]:
    """One yes/no question per image, replacing easy-VQA's own, whose wording gives the answer
    away ("is there a red shape?" is "no" for 7 colors in 8).

    Half the images are asked about their own color or shape (yes); each of the others about
    the other value whose question has so far been "yes" more often than "no", so every question
    string ends up "yes" and "no" equally often (within one) and the question alone tells nothing.
    """
    answers = balanced(rng, len(images), ["yes", "no"])
    kinds = balanced(rng, len(images), ["color", "shape"])
    chosen = [attributes[kind] for attributes, kind in zip(images, kinds, strict=True)]
    surplus = Counter((k, v) for k, v, a in zip(kinds, chosen, answers, strict=True) if a == "yes")
    for i in rng.permutation(len(images)):
        if answers[i] == "no":
            options = [v for v in (COLORS if kinds[i] == "color" else SHAPES) if v != chosen[i]]
            most = max(surplus[kinds[i], v] for v in options)
            chosen[i] = rng.choice([v for v in options if surplus[kinds[i], v] == most])
            surplus[kinds[i], chosen[i]] -= 1
    return [
        (f"is there a {value} shape?" if kind == "color" else f"is there a {value}?", answer)
        for kind, value, answer in zip(kinds, chosen, answers, strict=True)
    ]


def _questions(archive: zipfile.ZipFile, part: str) -> dict[int, list[tuple[str, str]]]:
    """Image id -> its (question, answer) pairs, in the wheel's order."""
    by_image = defaultdict(list)
    for question, answer, image in json.loads(archive.read(f"{DATA}/{part}/questions.json")):
        by_image[image].append((question, answer))
    return dict(by_image)


def _split_images(
    questions: dict[str, dict], seed: int, sizes: dict[str, int]
) -> dict[str, list[tuple[str, int]]]:
    """split -> (easy-VQA part, image id): a seeded VAL_FRACTION of train is val; a smaller
    size takes a seeded subset of each split."""
    rng = split_rng(seed, "val")
    train = rng.permutation(sorted(questions["train"])).tolist()
    n_val = round(VAL_FRACTION * len(train))
    pools = {
        "train": ("train", train[n_val:]),
        "val": ("train", train[:n_val]),
        "test": ("test", rng.permutation(sorted(questions["test"])).tolist()),
    }
    chosen = {}
    for split, n in sizes.items():
        part, pool = pools[split]
        if n > len(pool):
            raise ValueError(f"easy-vqa has {len(pool)} {split} images, not {n}")
        chosen[split] = [(part, image) for image in sorted(pool[:n])]
    return chosen


def _attributes(qa: list[tuple[str, str]], png: bytes) -> tuple[dict[str, str], bool]:
    """The image's color and shape, and whether the pixels had to complete them."""
    from_questions = attributes_from_questions(qa)
    from_pixels = attributes_from_pixels(png)
    for attribute, value in from_questions.items():
        if from_pixels[attribute] != value:
            raise EasyVQAError(
                f"the pixels read as a {from_pixels[attribute]} {attribute}, the questions say {value}"
            )
    return from_pixels, len(from_questions) < 2


def _samples(
    split: str, image: int, media: str, attributes: dict[str, str], qa: list[tuple[str, str]]
) -> list[Sample]:
    typed = [(_question_type(answer), question, answer) for question, answer in qa]
    caption = f"a {attributes['color']} {attributes['shape']}"
    samples = media_samples(f"easy-vqa-{split}-{image}", split, "image", media, caption, typed)
    samples[0].extra["attributes"] = attributes  # the caption's parts, for filtering or checks
    return samples


def _question_type(answer: str) -> str:
    return "yes/no" if answer in ("yes", "no") else _attribute(answer)


def _attribute(word: str) -> str | None:
    return "color" if word in COLORS else "shape" if word in SHAPES else None


def _card(from_pixels: int) -> str:
    return f"""\
easy-VQA (Victor Zhou, {ORIGINAL}), from the PyPI package `{PACKAGE}` {VERSION} (wheel sha256
`{SHA256}`), under the {LICENSE} license (LICENSE in this directory).

64x64 PNG images, each one shape (circle, rectangle or triangle) in one of eight colors, with
easy-VQA's own questions and answers (13 answers; types: shape, color, yes/no). A seeded
{VAL_FRACTION:.0%} of easy-VQA's train images is val; its test is test. Each image also has a
caption, "a <color> <shape>", from what its questions and answers reveal. Where they leave the
color or shape open ({from_pixels} images here), the pixels complete it (exact named colors;
outline), a reading the build checks against every image whose questions do tell.

easy-VQA's own yes/no questions carry a strong prior in their wording ("is there a red
shape?" is "no" for 7 colors in 8: a blind baseline scores 0.83 on them). They are replaced by
one yes/no question per image, balanced so that each question string is "yes" and "no" equally
often: half ask about the image's own color or shape, half about a random other one.
"""


DATASET = Embedded(
    name="easy-vqa",
    modality="image",
    summary="easy-VQA from PyPI: 64x64 shapes, 48k questions, 13 answers (MIT)",
    version=2,
    sizes={
        "default": {"train": 3600, "val": 400, "test": 1000},
        "tiny": {"train": 4, "val": 2, "test": 2},
    },
    build=build,
)
