"""The scenes dataset: deterministic, real images that show their objects, answers that follow
from the objects, distinct captions, and questions that alone give nothing away."""

import re
from collections import Counter, defaultdict
from itertools import combinations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from epalm.data.embedded import EMBEDDED, build_embedded, scenes
from epalm.data.embedded.common import SPLITS, blind_accuracy
from epalm.data.manifest import read_manifest
from epalm.zoo import cache

TINY = EMBEDDED["scenes"].sizes["tiny"]
MID = {"train": 600, "test": 200}  # enough questions per string to measure the balance


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``get(copy=0)``: the tiny build; ``copy`` picks a separate cache."""
    paths = {}

    def get(copy=0):
        if copy not in paths:
            cache_dir = tmp_path_factory.mktemp(f"scenes{copy}")
            paths[copy] = build_embedded("scenes", size="tiny", cache_dir=cache_dir)
        return paths[copy]

    return get


def manifests(root):
    return {split: read_manifest(root / f"{split}.jsonl") for split in SPLITS}


def by_image(samples):
    """media -> (its objects, its [(question type, question, answer)])"""
    objects, qa = {}, defaultdict(list)
    for s in samples:
        if s.task == "caption":
            objects[s.media[0]] = s.extra["objects"]
        else:
            qa[s.media[0]].append((s.extra["question_type"], s.question, s.answers[0]))
    return {media: (objects[media], qa[media]) for media in objects}


# --- the answers, recomputed from the objects with nothing of the generator's ---


def attribute(word):
    return "color" if word in scenes.COLORS else "shape" if word in scenes.SHAPES else "size"


def words(phrase):
    """'red shapes' -> ['red'], 'circles' -> ['circle'], 'large green triangle' -> all three."""
    *rest, last = phrase.split()
    return [w for w in [*rest, last.removesuffix("s")] if w != "shape"]


def matching(objects, phrase):
    return [o for o in objects if all(o[attribute(w)] == w for w in words(phrase))]


def the_one(objects, phrase):
    (found,) = matching(objects, phrase)  # a reference is always the only one of its kind
    return found


def truth(question, objects):
    if m := re.fullmatch(r"how many (.+)\?", question):
        return str(len(matching(objects, m[1])))
    if m := re.fullmatch(
        r"what (color|shape) is (?:the shape )?(left|right) of the (.+)\?", question
    ):
        ref = the_one(objects, m[3])
        side = [o for o in objects if (o["x"] < ref["x"]) == (m[2] == "left") and o is not ref]
        return min(side, key=lambda o: abs(o["x"] - ref["x"]))[m[1]]
    if m := re.fullmatch(r"is there an? (.+)\?", question):
        return "yes" if matching(objects, m[1]) else "no"
    if m := re.fullmatch(r"are there more (.+) than (.+)\?", question):
        a, b = (len(matching(objects, phrase)) for phrase in m.groups())
        assert a != b, question  # asked only when the counts differ
        return "yes" if a > b else "no"
    if m := re.fullmatch(r"is the (.+) bigger than the (.+)\?", question):
        a, b = (the_one(objects, phrase)["size"] for phrase in m.groups())
        assert a != b, question  # asked only between different sizes
        return "yes" if a == "large" else "no"
    raise AssertionError(f"unexpected question {question!r}")


def check_scene(objects, qa):
    assert 2 <= len(objects) <= 4
    assert [o["x"] for o in objects] == sorted(o["x"] for o in objects)  # left to right
    for a, b in combinations(objects, 2):
        dx, dy = abs(a["x"] - b["x"]), abs(a["y"] - b["y"])
        reach = (scenes.SIZES[a["size"]] + scenes.SIZES[b["size"]]) / 2
        assert dx >= 4 and (dx > reach or dy > reach), (a, b)  # clear "left of", no overlap
    assert len({q for _, q, _ in qa}) == len(qa) and 4 <= len(qa) <= 6
    assert Counter(kind for kind, _, _ in qa)["count"] == 1
    for kind, question, answer in qa:
        assert answer == truth(question, objects), (kind, question, answer, objects)


def test_answers_and_captions_follow_from_the_objects(built):
    for split, samples in manifests(built()).items():
        images = by_image(samples)
        assert len(images) == TINY[split]
        for media, (objects, qa) in images.items():
            check_scene(objects, qa)
            (caption,) = next(
                s.captions for s in samples if s.task == "caption" and s.media[0] == media
            )
            assert caption == " left of ".join(
                f"a {o['size']} {o['color']} {o['shape']}" for o in objects
            )


def test_answers_follow_from_the_objects_over_many_scenes():
    images = by_image(scenes.split_samples(0, "val", 300))
    for objects, qa in images.values():
        check_scene(objects, qa)
    kinds = Counter(kind for _, qa in images.values() for kind, _, _ in qa)
    assert kinds["count"] == 300 and kinds["exist"] == 600 and kinds["compare"] == 300
    assert kinds["relation"] > 500  # two, unless no object is the only one of its kind


def test_captions_are_distinct_within_a_split(built):
    for samples in manifests(built()).values():
        captions = [s.captions[0] for s in samples if s.task == "caption"]
        assert len(set(captions)) == len(captions)
    captions = [
        s.captions[0] for s in scenes.split_samples(0, "train", 1000) if s.task == "caption"
    ]
    assert len(set(captions)) == len(captions) == 1000


# --- the images ---


def test_same_seed_same_bytes(built):
    first, again = built(), built(copy=1)
    assert first != again
    hashes = [
        {f: h["sha256"] for f, h in cache.read_manifest(r)["files"].items()} for r in (first, again)
    ]
    assert hashes[0] == hashes[1]
    assert sum(name.endswith(".png") for name in hashes[0]) == sum(TINY.values())


def test_images_are_64x64_rgb_with_each_object_at_its_centre(built):
    for samples in manifests(built()).values():
        for s in samples:
            if s.task != "caption":
                continue
            with Image.open(s.media_paths[0]) as image:
                assert image.format == "PNG" and image.mode == "RGB" and image.size == (64, 64)
                pixels = np.asarray(image)
            for o in s.extra["objects"]:
                assert tuple(pixels[int(o["y"]), int(o["x"])]) == scenes.COLORS[o["color"]], o


def test_manifests_are_the_plan(built):
    root = built()
    for split, n in TINY.items():
        planned = [s.to_json() for s in scenes.split_samples(0, split, n)]
        assert [s.to_json() for s in read_manifest(root / f"{split}.jsonl")] == planned


def test_rendered_scenes_show_their_objects():
    """Each object is one blob of its color, shape and size, where the objects say."""
    for scene in scenes.plan(1, "train", 80):
        pixels = np.asarray(scenes.render(scene.objects)).astype(int)
        mask = np.abs(pixels - scenes.BACKGROUND).sum(-1) > 90
        labels, count = ndimage.label(mask)
        assert count == len(scene.objects), scene
        for o in scene.objects:
            blob = labels == labels[int(o.y), int(o.x)]
            rows, cols = np.nonzero(blob)
            width = np.ptp(cols) + 1
            fill = blob.sum() / (width * (np.ptp(rows) + 1))
            shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
            colors = Counter(map(tuple, pixels[blob]))
            assert colors.most_common(1)[0][0] == scenes.COLORS[o.color], o
            assert shape == o.shape and ("large" if width > 15 else "small") == o.size, (o, fill)
            assert abs(cols.mean() + 0.5 - o.x) < 1.5, o


# --- balance: the question alone gives nothing away ---


def question_prior(samples, answers):
    """The best any answer per question string does on the questions with these answers."""
    by_question = defaultdict(Counter)
    for s in samples:
        if s.task == "vqa" and s.answers[0] in answers:
            by_question[s.question][s.answers[0]] += 1
    return sum(c.most_common(1)[0][1] for c in by_question.values()) / sum(
        c.total() for c in by_question.values()
    )


def test_each_question_strings_answers_are_even():
    train, test = (scenes.split_samples(0, split, n) for split, n in MID.items())
    report = blind_accuracy(train, test)
    assert set(report) == {"count", "relation", "exist", "compare"}
    limits = {"count": 0.35, "relation": 0.35, "exist": 0.6, "compare": 0.6}
    for kind, row in report.items():
        assert row["question_prior"] <= limits[kind], (kind, row)
        assert row["blind"] <= row["question_prior"] + 0.02, (kind, row)
    assert report["exist"]["prior"] <= 0.52 and report["compare"]["prior"] <= 0.52
    assert question_prior(test, set(scenes.COLORS)) <= 0.3  # relation: "what color ...?"
    assert question_prior(test, set(scenes.SHAPES)) <= 0.45  # relation: "what shape ...?"
