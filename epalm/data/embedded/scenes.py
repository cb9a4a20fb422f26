"""``scenes``: synthetic 64x64 PNG scenes of 2-4 shapes, with captions and balanced questions.

A scene is two to four objects (a color, a shape and a size each) on a light-gray background,
never overlapping and at clearly distinct x positions, so "left of" is never in doubt. Each
image has a caption naming its objects from left to right and questions of four types: count,
relation, exist and compare. The question alone gives nothing away: each question string's
answers are as even as the split allows. Count questions get that by construction (the answer
is drawn first, balanced per question, and the scene built to fit); the others are picked per
scene among the questions it answers, each time the answer its question string has had least.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from itertools import permutations, product
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from epalm.data.embedded.common import (
    Built,
    Embedded,
    balanced,
    blind_accuracy,
    media_samples,
    split_rng,
    synthesize,
)
from epalm.data.manifest import Sample

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 210, 30),
    "purple": (145, 60, 200),
    "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 12, "large": 20}  # pixels across
SIZE, SUPERSAMPLE = 64, 4  # draw 4x larger, then shrink: smooth edges
BACKGROUND = (205, 205, 205)
GAP = 2  # pixels at least between two objects' boxes, and between a box and the edge
MIN_DX = 6  # pixels at least between two objects' centres in x: "left of" is never close
COUNTS = {  # count question -> the (attribute, value) it counts; None: every object
    "how many shapes?": None,
    **{f"how many {c} shapes?": ("color", c) for c in COLORS},
    **{f"how many {s}s?": ("shape", s) for s in SHAPES},
}
QUESTIONS = {"relation": 2, "exist": 2, "compare": 1}  # picked per scene, after its count one


@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    size: str
    x: float  # centre, in pixels from the left edge
    y: float  # centre, in pixels from the top edge


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # left to right
    qa: tuple[tuple[str, str, str], ...]  # (question type, question, answer)


def plan(seed: int, split: str, n: int) -> list[Scene]:
    """The split's scenes and questions, in order; nothing is rendered."""
    rng = split_rng(seed, split)
    counts = _count_targets(rng, n)
    yes_no = {
        kind: balanced(rng, n * QUESTIONS[kind], ("yes", "no")) for kind in ("exist", "compare")
    }
    tally, captions, scenes = _Tally(), set(), []
    for i, (question, answer) in enumerate(counts):
        objects = _unique_objects(rng, question, answer, captions)
        qa = [("count", question, str(answer))]
        for kind, many in QUESTIONS.items():
            for k in range(many):
                want = yes_no[kind][i * many + k] if kind in yes_no else None
                asked = {_topic(q) for _, q, _ in qa}
                picked = tally.pick(rng, ANSWERS[kind](objects), want, asked)
                if picked:
                    qa.append((kind, *picked))
        scenes.append(Scene(objects, tuple(qa)))
    return scenes


def caption(objects: tuple[SceneObject, ...]) -> str:
    return " left of ".join(f"a {o.size} {o.color} {o.shape}" for o in objects)


def relation_answers(objects: tuple[SceneObject, ...]) -> dict[str, str]:
    """About the nearest object left (right) of one whose shape or color no other object has."""
    colors = Counter(o.color for o in objects)
    shapes = Counter(o.shape for o in objects)
    qa = {}
    for i, o in enumerate(objects):
        for side, j in (("left", i - 1), ("right", i + 1)):
            if not 0 <= j < len(objects):
                continue
            if shapes[o.shape] == 1:
                qa[f"what color is the shape {side} of the {o.shape}?"] = objects[j].color
            if colors[o.color] == 1:
                qa[f"what shape is {side} of the {o.color} shape?"] = objects[j].shape
    return qa


def exist_answers(objects: tuple[SceneObject, ...]) -> dict[str, str]:
    full = {(o.size, o.color, o.shape) for o in objects}
    qa = {
        f"is there a {size} {color} {shape}?": _yes((size, color, shape) in full)
        for size, color, shape in product(SIZES, COLORS, SHAPES)
    }
    for color, shape in product(COLORS, SHAPES):
        article = "an" if color[0] in "aeiou" else "a"  # "an orange square"
        qa[f"is there {article} {color} {shape}?"] = _yes(
            any(f[1:] == (color, shape) for f in full)
        )
    return qa


def compare_answers(objects: tuple[SceneObject, ...]) -> dict[str, str]:
    """ "More" only between different counts; "bigger" only between two objects, each the only
    one of its shape (color), of different sizes."""
    qa = {}
    for attribute, values, noun in (("shape", SHAPES, "{}s"), ("color", COLORS, "{} shapes")):
        count = Counter(getattr(o, attribute) for o in objects)
        for a, b in permutations(values, 2):
            if count[a] != count[b]:
                more = f"are there more {noun.format(a)} than {noun.format(b)}?"
                qa[more] = _yes(count[a] > count[b])
        only = {getattr(o, attribute): o for o in objects if count[getattr(o, attribute)] == 1}
        name = "{}" if attribute == "shape" else "{} shape"
        for a, b in permutations(only, 2):
            if only[a].size != only[b].size:
                bigger = f"is the {name.format(a)} bigger than the {name.format(b)}?"
                qa[bigger] = _yes(only[a].size == "large")
    return qa


ANSWERS = {"relation": relation_answers, "exist": exist_answers, "compare": compare_answers}


def render(objects: tuple[SceneObject, ...]) -> Image.Image:
    big = SIZE * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in objects:
        x, y = o.x * SUPERSAMPLE, o.y * SUPERSAMPLE
        half, color = SIZES[o.size] * SUPERSAMPLE / 2, COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse((x - half, y - half, x + half, y + half), fill=color)
        elif o.shape == "square":
            side = 0.9 * half  # a full-box square would look bigger than the circle
            draw.rectangle((x - side, y - side, x + side, y + side), fill=color)
        else:  # pointing up, its box the circle's: the centre lies well inside
            draw.polygon([(x, y - half), (x + half, y + half), (x - half, y + half)], fill=color)
    return image.resize((SIZE, SIZE), Image.Resampling.BOX)


def split_samples(seed: int, split: str, n: int) -> list[Sample]:
    """The manifest of a split, without rendering an image."""
    return [s for i, scene in enumerate(plan(seed, split, n)) for s in _samples(scene, split, i)]


def blind_table(samples: dict[str, list[Sample]]) -> str:
    """Markdown: per question type, how well the question alone answers it (train -> test)."""
    rows = [
        "| question type | answers | blind | prior | question_prior |",
        "|---|---|---|---|---|",
    ]
    for kind, row in blind_accuracy(samples["train"], samples["test"]).items():
        rows.append(
            f"| {kind} | {row['answers']} | {row['blind']:.2f} | {row['prior']:.2f} "
            f"| {row['question_prior']:.2f} |"
        )
    return "\n".join(rows) + "\n"


def build(out_dir: Path, seed: int, sizes: dict[str, int]) -> Built:
    (out_dir / "images").mkdir()
    samples = synthesize(
        out_dir,
        seed,
        sizes,
        name="scenes",
        plan=plan,
        write=lambda path, scene: render(scene.objects).save(path, format="PNG"),
        media=_media,
        samples=_samples,
    )
    provenance = {
        "generator": __name__,
        "resolution": f"{SIZE}x{SIZE}",
        "format": "PNG, RGB",
        "license": "Apache-2.0 (generated by epalm)",
    }
    blind = (
        "Blind baseline of this build: each test question answered with its most frequent\n"
        "answer in train; `question_prior`, the best any one answer per question string can do\n"
        f"on test.\n\n{blind_table(samples)}"
    )
    return Built(samples, provenance, f"{CARD}\n{blind}")


class _Tally:
    """How often each question string has had each answer so far in a split."""

    def __init__(self) -> None:
        self.answers: defaultdict[str, Counter] = defaultdict(Counter)

    def pick(
        self, rng: np.random.Generator, qa: dict[str, str], want: str | None, asked: set[str]
    ) -> tuple[str, str] | None:
        """The question (and answer) whose answer its string has had least, relative to the
        string's most frequent one; then the least asked string; then at random. ``want``: an
        answer to prefer (yes/no types: balanced over the split); ``asked``: topics to skip."""
        options = [(q, a) for q, a in qa.items() if _topic(q) not in asked]
        options = [(q, a) for q, a in options if a == want] or options
        if not options:
            return None
        order = rng.permutation(len(options))
        best = min(range(len(options)), key=lambda k: (*self._cost(*options[k]), order[k]))
        question, answer = options[best]
        self.answers[question][answer] += 1
        return question, answer

    def _cost(self, question: str, answer: str) -> tuple[int, int]:
        seen = self.answers[question]
        return seen[answer] - max(seen.values(), default=0), seen.total()


def _count_targets(rng: np.random.Generator, n: int) -> list[tuple[str, int]]:
    """(count question, answer) per scene: questions balanced, and each one's answers too."""
    questions = balanced(rng, n, list(COUNTS))
    answers = [0] * n
    for question, key in COUNTS.items():
        where = [i for i, q in enumerate(questions) if q == question]
        values = (2, 3, 4) if key is None else (0, 1, 2, 3, 4)
        for i, value in zip(where, balanced(rng, len(where), values)):
            answers[i] = value
    return list(zip(questions, answers))


def _unique_objects(
    rng: np.random.Generator, question: str, answer: int, captions: set[str]
) -> tuple[SceneObject, ...]:
    """Objects that answer the count question, captioned unlike any scene before them."""
    for _ in range(1000):
        objects = _objects(rng, COUNTS[question], answer)
        if caption(objects) not in captions:
            captions.add(caption(objects))
            return objects
    raise RuntimeError(f"no new scene for {question!r} = {answer} after 1000 tries")


def _objects(
    rng: np.random.Generator, key: tuple[str, str] | None, count: int
) -> tuple[SceneObject, ...]:
    """2-4 objects, exactly ``count`` of them with ``key`` (or ``count`` objects in all)."""
    n = count if key is None else int(rng.integers(max(2, count), 5))
    kinds = []
    for k in range(n):
        kind = {
            "color": str(rng.choice(list(COLORS))),
            "shape": str(rng.choice(SHAPES)),
            "size": str(rng.choice(list(SIZES))),
        }
        if key is not None:
            attribute, value = key
            others = [v for v in (COLORS if attribute == "color" else SHAPES) if v != value]
            kind[attribute] = value if k < count else str(rng.choice(others))
        kinds.append(kind)
    centres = _place(rng, [SIZES[kind["size"]] for kind in kinds])
    objects = [SceneObject(**kind, x=x, y=y) for kind, (x, y) in zip(kinds, centres)]
    return tuple(sorted(objects, key=lambda o: o.x))


def _place(rng: np.random.Generator, sizes: list[int]) -> list[tuple[float, float]]:
    """Centres, largest objects first, each by rejection: inside the frame, apart from the
    others' boxes by GAP and from their centres by MIN_DX in x."""
    order = sorted(range(len(sizes)), key=lambda k: -sizes[k])
    for _ in range(1000):
        placed: dict[int, tuple[float, float]] = {}
        for k in order:
            low, high = sizes[k] / 2 + GAP, SIZE - sizes[k] / 2 - GAP
            for _ in range(100):
                x, y = (round(float(v), 1) for v in rng.uniform(low, high, 2))
                if all(_apart((x, y, sizes[k]), (*placed[j], sizes[j])) for j in placed):
                    placed[k] = (x, y)
                    break
            else:
                break
        else:
            return [placed[k] for k in range(len(sizes))]
    raise RuntimeError(f"cannot place objects of sizes {sizes}")


def _apart(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool:
    dx, dy, reach = abs(a[0] - b[0]), abs(a[1] - b[1]), (a[2] + b[2]) / 2 + GAP
    return dx >= MIN_DX and (dx >= reach or dy >= reach)


def _topic(question: str) -> str:
    """What a question is about: "is there a large red circle?" asks what "is there a red
    circle?" does (its last two words), so one image never gets both."""
    if question.startswith("is there"):
        return " ".join(question.rstrip("?").split()[-2:])
    return question


def _yes(truth: bool) -> str:
    return "yes" if truth else "no"


def _samples(scene: Scene, split: str, index: int) -> list[Sample]:
    prefix = f"scenes-{split}-{index:05d}"
    media = _media(split, index)
    samples = media_samples(prefix, split, "image", media, caption(scene.objects), list(scene.qa))
    samples[0].extra["objects"] = [asdict(o) for o in scene.objects]  # the truth, for checks
    return samples


def _media(split: str, index: int) -> str:
    return f"images/{split}-{index:05d}.png"


CARD = """\
Synthetic scenes: 64x64 RGB PNG images of 2-4 objects on a light-gray background.

Each object has a color (red, green, blue, yellow, purple, orange), a shape (circle, square,
triangle), a size (small: 12 px across, large: 20 px) and a position. Objects never overlap
and their centres are at least 6 px apart in x, at varied heights. "Left of X" means the
nearest object whose centre is left of X's (likewise "right of"), and X is always the only
object of its shape or color.

Per image: a caption listing the objects from left to right ("a small red circle left of a
large blue square left of a small green triangle", unique within a split; the objects, with
their centres in pixels, are in the caption sample's `objects`) and up to six questions:

- count (one per image): "how many shapes?", "how many red shapes?", "how many circles?"
  ("0" to "4"); the answer is drawn first, balanced per question, and the scene built to fit;
- relation (two): "what color is the shape left of the circle?", "what shape is right of the
  red shape?" (a color or a shape);
- exist (two, never on the same color and shape): "is there a large green triangle?", "is
  there a red square?" (yes / no);
- compare (one): "are there more circles than squares?", "are there more red shapes than blue
  shapes?" (asked only when the counts differ), "is the red shape bigger than the blue
  shape?", "is the circle bigger than the square?" (only between the only objects of their
  color or shape, of different sizes) (yes / no).

Relation, exist and compare questions are picked per image among those the scene answers,
each time the one whose answer its question string has had least in the split (yes and no
are balanced over the split first), so every question string's answers are as even as the
split allows and the question alone gives nothing away.
"""

DATASET = Embedded(
    name="scenes",
    modality="image",
    summary="synthetic 64x64 scenes of 2-4 shapes: count, relation, exist, compare (balanced)",
    version=1,
    sizes={
        "default": {"train": 4000, "val": 400, "test": 600},
        "tiny": {"train": 4, "val": 2, "test": 2},
    },
    build=build,
)
