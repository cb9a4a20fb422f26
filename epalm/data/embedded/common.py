"""What the embedded datasets share: their description, balanced attributes and the blind baseline."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from epalm.data.manifest import Sample

SPLITS = ("train", "val", "test")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


@dataclass(frozen=True)
class Built:
    """What a dataset's builder made: samples per split (media already written) and provenance."""

    samples: dict[str, list[Sample]]
    provenance: dict[str, Any]
    card: str  # the dataset-specific part of README.md (markdown)


@dataclass(frozen=True)
class Embedded:
    name: str
    modality: str
    summary: str  # one line, for listings
    version: int  # part of the cache key: bump it whenever the generated data changes
    sizes: dict[str, dict[str, int]]  # size name -> split -> media items
    build: Callable[[Path, int, dict[str, int]], Built]  # (out_dir, seed, items per split)


def split_rng(seed: int, split: str) -> np.random.Generator:
    """One generator per split, so the size of one split never changes another's items."""
    return np.random.default_rng([seed, SPLITS.index(split)])


def balanced(rng: np.random.Generator, n: int, values: Sequence[Any]) -> list[Any]:
    """``n`` values, each as often as the others (within one), in random order."""
    full, rest = divmod(n, len(values))
    extra = rng.choice(len(values), rest, replace=False)  # which values get the one more
    picks = list(values) * full + [values[i] for i in extra]
    return [picks[i] for i in rng.permutation(n)]


def media_samples(
    prefix: str,
    split: str,
    modality: str,
    media: str,
    caption: str,
    qa: list[tuple[str, str, str]],
) -> list[Sample]:
    """A caption sample then one sample per ``(question_type, question, answer)``."""
    samples = [Sample(f"{prefix}-caption", split, modality, [media], captions=[caption])]
    for k, (kind, question, answer) in enumerate(qa):
        samples.append(
            Sample(
                f"{prefix}-q{k}",
                split,
                modality,
                [media],
                question=question,
                answers=[answer],
                extra={"question_type": kind},
            )
        )
    return samples


def synthesize(
    out_dir: Path,
    seed: int,
    sizes: dict[str, int],
    *,
    name: str,
    plan: Callable[[int, str, int], list[Any]],
    write: Callable[[Path, Any], None],
    media: Callable[[str, int], str],
    samples: Callable[[Any, str, int], list[Sample]],
) -> dict[str, list[Sample]]:
    """Plan each split's items, write each one's media file (with a progress bar), and return
    every split's samples."""
    by_split = {}
    for split, n in sizes.items():
        items = plan(seed, split, n)
        for i, item in enumerate(tqdm(items, desc=f"{name} {split}", unit="item")):
            write(out_dir / media(split, i), item)
        by_split[split] = [s for i, item in enumerate(items) for s in samples(item, split, i)]
    return by_split


def blind_accuracy(train: list[Sample], test: list[Sample]) -> dict[str, dict[str, float]]:
    """Per question type: how well the question alone answers it, next to the answer priors.

    ``blind``: accuracy on ``test`` of answering each question with its most frequent answer in
    ``train`` (the type's most frequent answer for a question never seen in train). ``prior``:
    the share of the type's most frequent answer in ``test``. ``question_prior``: the best any
    answer-per-question-string can do on ``test``, an upper bound of ``blind``. A question
    that needs its media keeps all three near 1 / ``answers``.
    """
    by_question, by_type = defaultdict(Counter), defaultdict(Counter)
    for s in _questions(train):
        by_question[s.question][s.answers[0]] += 1
        by_type[s.extra["question_type"]][s.answers[0]] += 1
    right, answers, test_questions = Counter(), defaultdict(Counter), defaultdict(Counter)
    for s in _questions(test):
        kind = s.extra["question_type"]
        seen = by_question.get(s.question) or by_type.get(kind) or Counter({None: 1})
        right[kind] += seen.most_common(1)[0][0] == s.answers[0]
        answers[kind][s.answers[0]] += 1
        test_questions[kind, s.question][s.answers[0]] += 1
    best = Counter()
    for (kind, _), counts in test_questions.items():
        best[kind] += counts.most_common(1)[0][1]
    return {
        kind: {
            "blind": right[kind] / counts.total(),
            "prior": counts.most_common(1)[0][1] / counts.total(),
            "question_prior": best[kind] / counts.total(),
            "answers": len(counts),
            "questions": counts.total(),
        }
        for kind, counts in sorted(answers.items())
    }


def _questions(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.task == "vqa"]
