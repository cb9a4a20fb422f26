"""VQA: the official answer normalisation, training targets, accuracy and exact match.

The rules are those of the official VQA evaluation (GT-Vision-Lab/VQA, ``vqaEval.py``), quirks
included, so local numbers agree with the evaluation server's. Its code exists in two versions,
and ``vqa_accuracy(..., version=...)`` offers both:

* ``"2017"`` (the VQA v2.0 code of 2016-2021, which published numbers, eP-ALM's included, were
  computed with; the default): a prediction is normalised in full (newlines and tabs become
  spaces, then punctuation, then number words, articles and contractions: ``normalize_answer``);
  the annotators' answers only go through the punctuation step, and only when they disagree
  (the official annotation files are already normalised);
* ``"2021"`` (the repository's current code, "Fixed processing answers bug", March 2021): when
  the annotators disagree, both sides are normalised in full; when they agree, both are
  compared as written (only trimmed).

Either way accuracy averages, over every annotator left out in turn, ``min(#others matching / 3, 1)``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from epalm.data.manifest import Sample

log = logging.getLogger(__name__)

# The official list of marks; "." has a rule of its own, and others ("'", ":", "&", ...) stay.
_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
_COMMA_IN_NUMBER = re.compile(r"\d,\d")
# Official pattern "(?!<=\d)(\.)(?!\d)": its first group is a lookahead that never matches
# before a ".", so in effect a period goes unless a digit follows ("3.5" stays).
_PERIOD = re.compile(r"\.(?!\d)")
# The official call passes re.UNICODE (32) where re.sub takes ``count``: at most 32 periods go.
_PERIOD_LIMIT = 32
_NUMBERS = dict(
    none="0", zero="0", one="1", two="2", three="3", four="4", five="5",
    six="6", seven="7", eight="8", nine="9", ten="10",
)  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
VQA_EVAL_VERSIONS = ("2017", "2021")
# The official table as "written:fixed" pairs. Its entries that can never fire are left out
# (capitalised keys, as words are lower-cased first; identities such as "let's"); its one
# backwards entry, "somebody'd" -> "somebodyd", is kept, since it changes results.
_CONTRACTION_PAIRS = """
    aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
    couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't
    hadnt've:hadn't've hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've
    he'dve:he'd've hes:he's howd:how'd howll:how'll hows:how's isnt:isn't itd:it'd
    itd've:it'd've it'dve:it'd've itll:it'll maam:ma'am mightnt:mightn't mightnt've:mightn't've
    mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've neednt:needn't
    notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at
    'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've shouldve:should've
    shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd
    somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll
    somebodys:somebody's someoned:someone'd someoned've:someone'd've someone'dve:someone'd've
    someonell:someone'll someones:someone's somethingd:something'd somethingd've:something'd've
    something'dve:something'd've somethingll:something'll thats:that's thered:there'd
    thered've:there'd've there'dve:there'd've therere:there're theres:there's theyd:they'd
    theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're theyve:they've
    twas:'twas wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've werent:weren't
    whatll:what'll whatre:what're whats:what's whatve:what've whens:when's whered:where'd
    wheres:where's whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll
    whos:who's whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've
    wouldnt:wouldn't wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll
    y'allll:y'all'll yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd
    youd've:you'd've you'dve:you'd've youll:you'll youre:you're youve:you've
"""
_CONTRACTIONS = dict(pair.split(":") for pair in _CONTRACTION_PAIRS.split())
# Cut generated text at sentence-ending punctuation followed by a space or the end. Training
# targets are normalised (periods survive only before digits), so a trained model puts such a
# mark only where its answer ends: "yes. the man is..." -> "yes", "3.5" stays.
_ANSWER_END = re.compile(r"[.!?](?=\s|$)")


def process_punctuation(text: str) -> str:
    """The official punctuation step.

    Each mark is deleted where it touches a space (or anywhere, once the text holds a comma
    between digits: "1,000" -> "1000"), else it becomes a space ("red,blue" -> "red blue");
    the decision looks at the original text. Periods go unless a digit follows.
    """
    glue = _COMMA_IN_NUMBER.search(text) is not None
    table = {ord(p): "" if glue or f"{p} " in text or f" {p}" in text else " " for p in _PUNCT}
    return _PERIOD.sub("", text.translate(table), count=_PERIOD_LIMIT)


def process_digit_article(text: str) -> str:
    """The official word step: lower-case, number words to digits, articles out, contractions fixed."""
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def _trim(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """An answer as the official evaluation normalises a prediction."""
    return process_digit_article(process_punctuation(_trim(text)))


def _written(text: str) -> str:
    return _trim(text).lower()


def majority_answer(answers: Sequence[str]) -> str:
    """The annotators' most common answer as written (trimmed, lower-cased): of the answers
    that normalise alike, the group with the most votes, then its most frequent written form
    (ties: the first in order). "one" stays "one": the form the annotators wrote."""
    if not answers:
        raise ValueError("a VQA sample needs at least one answer")
    written = [_written(a) for a in answers]
    normalised = [normalize_answer(a) for a in written]
    votes = Counter(normalised)
    best = max(votes, key=votes.__getitem__)  # max keeps the first of equals
    forms = Counter(w for w, n in zip(written, normalised) if n == best)
    return max(forms, key=forms.__getitem__)


def _candidates(answers: Sequence[str]) -> list[str]:
    """Every form a right prediction can take: a match must equal an answer as written or
    normalised (normalisation is idempotent)."""
    written = [_written(a) for a in answers]
    return list(dict.fromkeys([*written, *(normalize_answer(a) for a in written)]))


def training_target(answers: Sequence[str], version: str = "2021") -> str:
    """The answer to train on: the majority as written, unless the metric of ``version``
    cannot score it; then the form of the answers it scores best (VQAv2's answers are
    normalised already, so there both are the same)."""
    target = majority_answer(answers)
    if vqa_accuracy(target, answers, version) > 0:
        return target
    scores = {c: vqa_accuracy(c, answers, version) for c in _candidates(answers)}
    best = max(scores, key=scores.__getitem__)
    return best if scores[best] > 0 else target


def answerable(answers: Sequence[str], version: str = "2021") -> bool:
    """Whether any prediction can score above 0 under the code of ``version``: the 2017 code
    never normalises unanimous answers, so ten "one"s can match neither "one" (normalised to
    "1") nor "1"."""
    return any(vqa_accuracy(c, answers, version) > 0 for c in _candidates(answers))


def unanswerable_questions(samples: Iterable[Sample], version: str = "2021") -> list[str]:
    """Ids of the questions no prediction can answer right under the code of ``version``."""
    return [s.id for s in samples if s.answers is not None and not answerable(s.answers, version)]


def unanswerable_note(ids: Sequence[str], total: int, version: str, where: str) -> str:
    """What to tell the user about ``ids``, the unanswerable questions of ``where``."""
    hint = (
        "; task.vqa_eval=2021 compares unanimous answers as written"
        if version == "2017"
        else "; answers with capitals or stray marks that all annotators share are compared "
        "as written: lower-case them in the manifest"
    )
    return (
        f"{len(ids)} of {total} {where} questions cannot be answered right under the VQA "
        f"{version} code: every answer is unmatchable after its normalisation, so they score 0 "
        f"whatever is predicted (e.g. {', '.join(ids[:5])}){hint}"
    )


def vqa_accuracy(prediction: str, answers: Sequence[str], version: str = "2017") -> float:
    """The official VQA accuracy of one prediction against every annotator's answer, by the
    official code of ``version`` (``VQA_EVAL_VERSIONS``; see the module's docstring).

    Averaged over leaving each annotator out: ``min(#other annotators matching / 3, 1)``, with
    however many answers there are (with two or three, even a unanimous match stays below 1,
    as the official formula gives). A single answer leaves no one to compare with once left
    out, so it scores as ``exact_match`` instead of always 0.
    """
    if version not in VQA_EVAL_VERSIONS:
        raise ValueError(f"unknown VQA evaluation {version!r}; choose from {VQA_EVAL_VERSIONS}")
    if len(answers) < 2:
        return exact_match(prediction, answers)
    if version == "2017":
        predicted = normalize_answer(prediction)
        truth = [process_punctuation(a) for a in answers] if len(set(answers)) > 1 else answers
    else:
        predicted, truth = _trim(prediction), [_trim(a) for a in answers]
        if len(set(truth)) > 1:  # normalised in full on both sides (trimming again is a no-op)
            predicted, truth = normalize_answer(predicted), [normalize_answer(a) for a in truth]
    matches = [a == predicted for a in truth]
    total = sum(matches)
    return sum(min((total - m) / 3, 1.0) for m in matches) / len(matches)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals the most common normalised answer, else 0.0.

    The video-QA metric (MSRVTT-QA, MSVD-QA: one answer per question); against the majority
    answer, which is also the training target, rather than against any answer.
    """
    return float(normalize_answer(prediction) == normalize_answer(majority_answer(answers)))


def clean_answer(text: str) -> str:
    """Generated text -> the answer: first line, cut at the sentence's end, lower-cased."""
    first_line = text.strip().split("\n", 1)[0]
    return _ANSWER_END.split(first_line, 1)[0].strip().lower()


def vqa_scores(
    predictions: Mapping[str, str], samples: Iterable[Sample], version: str = "2017"
) -> dict[str, Any]:
    """Mean VQA accuracy (the official code of ``version``) and exact match over ``samples``
    (QA samples), by sample id.

    A sample without a prediction scores 0 and is counted in ``missing``, so a skipped sample
    can never raise the score.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("no samples to score")
    missing = [s.id for s in samples if s.id not in predictions]
    accuracy = exact = 0.0
    for s in samples:
        if s.answers is None:
            raise ValueError(f"sample {s.id!r} is a caption sample, not a question")
        if s.id in predictions:
            accuracy += vqa_accuracy(predictions[s.id], s.answers, version)
            exact += exact_match(predictions[s.id], s.answers)
    notes = []
    if missing:
        notes.append(f"{len(missing)} samples had no prediction and scored 0: {missing[:5]}")
        log.warning(notes[-1])
    return {
        "metrics": {"vqa_accuracy": accuracy / len(samples), "exact_match": exact / len(samples)},
        "vqa_eval": version,
        "count": len(samples),
        "missing": len(missing),
        "notes": notes,
    }
