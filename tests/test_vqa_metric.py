"""VQA accuracy and answer handling, on cases worked out by hand from the official rules."""

import json

import pytest

from epalm.data.manifest import Sample
from epalm.tasks import (
    clean_answer,
    exact_match,
    majority_answer,
    normalize_answer,
    training_target,
    unanswerable_questions,
    vqa_accuracy,
    vqa_scores,
    write_predictions,
)
from epalm.tasks.vqa import answerable


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two", "2"),  # number words become digits, after lower-casing
        ("none", "0"),
        ("a dog", "dog"),  # articles go
        ("The Dog!", "dog"),  # "!" vanishes: nothing else decides, it becomes a space, stripped
        ("dont", "don't"),  # contractions are fixed
        ("somebody'd", "somebodyd"),  # the official table's one backwards entry
        ("yes.", "yes"),  # a period not followed by a digit goes
        ("3.5", "3.5"),  # a period before a digit stays
        ("2.", "2"),
        ("1,000", "1000"),  # a comma between digits: every mark is deleted, not spaced
        ("1,000 dogs, 2 cats", "1000 dogs 2 cats"),
        ("red,blue", "red blue"),  # a mark touching no space becomes a space
        ("red, blue", "red blue"),  # a mark beside a space is deleted
        ("black/white", "black white"),
        ("  yes\n", "yes"),
        ("don't", "don't"),  # the apostrophe is not one of the marks
    ],
)
def test_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


def ten(matching, prediction="dog"):
    """10 annotators: ``matching`` say ``prediction``, the rest "cat"."""
    return [prediction] * matching + ["cat"] * (10 - matching)


# With k of 10 annotators matching, leaving out a matching one leaves k-1 matches, leaving
# out another leaves k: accuracy = (k * min((k-1)/3, 1) + (10-k) * min(k/3, 1)) / 10.
@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (0, 0.0),
        (1, 0.3),  # (1 * 0/3 + 9 * 1/3) / 10 = 3/10
        (2, 0.6),  # (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6/10
        (3, 0.9),  # (3 * 2/3 + 7 * 1) / 10 = (2 + 7) / 10
        (4, 1.0),  # (4 * 1 + 6 * 1) / 10: 3 of the others match whoever is left out
        (10, 1.0),
    ],
)
def test_accuracy_leave_one_out(k, expected):
    assert vqa_accuracy("A dog.", ten(k)) == pytest.approx(expected)


def test_accuracy_normalises_the_prediction():
    assert vqa_accuracy("Two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("dont", ["don't"] * 2 + ["no"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("1,000", ["1000"] + ["100"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("3.5", ["3.5"] * 4 + ["35"] * 6) == 1.0
    assert vqa_accuracy("35", ["3.5"] * 4 + ["35"] * 6) == 1.0  # 6 say "35"


def test_fewer_than_ten_answers():
    # yes, yes, no; predicted yes. Leave out a "yes": 1 of {yes, no} matches -> 1/3 (twice);
    # leave out "no": 2 of {yes, yes} match -> 2/3. Mean (1/3 + 1/3 + 2/3) / 3 = 4/9.
    assert vqa_accuracy("yes", ["yes", "yes", "no"]) == pytest.approx(4 / 9)
    # Two answers, both matching: each left out leaves 1 match -> 1/3 (the formula's ceiling).
    assert vqa_accuracy("yes", ["yes", "yes"]) == pytest.approx(1 / 3)
    # One answer: no one is left to compare with, so it is exact match.
    assert vqa_accuracy("Yes.", ["yes"]) == 1.0
    assert vqa_accuracy("no", ["yes"]) == 0.0
    with pytest.raises(ValueError, match="at least one answer"):
        vqa_accuracy("yes", [])


def test_official_quirks_on_the_annotators_side():
    # Annotators' answers get only the punctuation step, and only when they disagree.
    assert vqa_accuracy("dog", ["dog."] * 3 + ["cat"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("dog", ["dog."] * 10) == 0.0  # unanimous: left as they are
    assert vqa_accuracy("two", ["two"] * 4 + ["cat"] * 6) == 0.0  # "2" never meets "two"


def test_majority_answer_is_the_answer_as_written():
    # votes counted over normalised answers, then the group's most common written form
    assert majority_answer(["Two", "2", "3"]) == "two"  # "two" and "2" tie: the first
    assert majority_answer(["2", " two", "2", "3", "3"]) == "2"
    assert majority_answer(["Red", "blue", "red", "blue"]) == "red"  # a tie: the first
    assert majority_answer(["a cat"]) == "a cat"  # trimmed and lower-cased, nothing else
    assert majority_answer(["one"] * 10) == "one"


# Answers written the natural way: number words, articles, contractions, punctuation. Each
# trained-on target must score 1.0 under the code a manifest dataset is scored with (2021).
NATURAL = {
    "number word": ["one"] * 10,
    "number word, split": ["seven"] * 7 + ["7"] * 3,
    "article": ["a dog"] * 10,
    "article, split": ["a dog"] * 6 + ["dog"] * 4,
    "contraction": ["don't know"] * 10,
    "contraction, split": ["dont know"] * 5 + ["don't know"] * 5,
    "punctuation": ["yes!"] * 10,
    "punctuation, split": ["yes!"] * 4 + ["yes"] * 6,
}


@pytest.mark.parametrize("answers", NATURAL.values(), ids=NATURAL.keys())
def test_the_target_of_natural_answers_scores_in_full_under_2021(answers):
    target = training_target(answers, "2021")
    assert vqa_accuracy(target, answers, "2021") == 1.0
    assert answerable(answers, "2021")


def test_unanimous_number_words_cannot_score_under_2017_and_are_noticed():
    answers = ["one"] * 10
    # what the issue saw: neither the word nor the digit ever matches
    assert vqa_accuracy("one", answers, "2017") == vqa_accuracy("1", answers, "2017") == 0.0
    assert not answerable(answers, "2017") and answerable(answers, "2021")
    samples = [qa("q1", answers), qa("q2", ["1"] * 10), qa("q3", ["dog."] * 10)]
    assert unanswerable_questions(samples, "2017") == ["q1", "q3"]
    assert unanswerable_questions(samples, "2021") == []


def test_vqav2_targets_are_unchanged():
    # VQAv2's answers are stored normalised: the written majority is the normalised one, and
    # the 2017 code scores it as before
    for answers in (["2"] * 7 + ["3"] * 3, ["yes"] * 10, ["tennis racket"] * 4 + ["racket"] * 6):
        target = training_target(answers, "2017")
        assert target == normalize_answer(majority_answer(answers)) == majority_answer(answers)
        assert vqa_accuracy(target, answers, "2017") == 1.0


def test_the_target_is_a_form_the_metric_can_match():
    # unanimous "dog." under 2017: no prediction matches ("dog." normalises to "dog")
    assert training_target(["Dog."] * 10, "2017") == "dog."
    # disagreeing annotators under 2017: the punctuation-processed answers are matched
    answers = ["dog."] * 6 + ["cat"] * 4
    assert vqa_accuracy(training_target(answers, "2017"), answers, "2017") == 1.0


def test_exact_match_against_the_majority_answer():
    assert exact_match("Two.", ["2"]) == 1.0
    assert exact_match("2", ["2", "3", "3"]) == 0.0  # "2" is an answer, not the most common


@pytest.mark.parametrize(
    ("generated", "answer"),
    [
        ("  Yes. The man is holding a racket.", "yes"),
        ("3.5 meters\nQuestion: what", "3.5 meters"),
        ("Blue!", "blue"),
        ("red and white", "red and white"),
    ],
)
def test_clean_answer(generated, answer):
    assert clean_answer(generated) == answer


def qa(id, answers):
    return Sample(id, "val", "image", ["x.jpg"], question="what?", answers=answers)


def test_scores_count_missing_predictions_as_wrong():
    samples = [qa("vqa-1", ten(3)), qa("vqa-2", ["yes"] * 10), qa("vqa-3", ["no"] * 10)]
    result = vqa_scores({"vqa-1": "dog", "vqa-2": "yes"}, samples)
    assert result["metrics"]["vqa_accuracy"] == pytest.approx((0.9 + 1.0 + 0.0) / 3)
    assert result["metrics"]["exact_match"] == pytest.approx((0 + 1 + 0) / 3)  # "cat" wins vqa-1
    assert result["missing"] == 1 and "vqa-3" in result["notes"][0]


def test_vqa_predictions_file(tmp_path):
    path = tmp_path / "answers.json"
    write_predictions(path, {"vqa-458752000": "racket", "q7": "2"}, "vqa")
    assert json.loads(path.read_text()) == [
        {"question_id": 458752000, "answer": "racket"},
        {"question_id": "q7", "answer": "2"},
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["answers.json"]  # no temporary left


# --- the two versions of the official code ---------------------------------------------------
@pytest.mark.parametrize(
    ("prediction", "answers", "v2017", "v2021"),
    [
        # unanimous annotators: 2017 normalises the prediction only, 2021 compares as written
        ("one", ["one"] * 10, 0.0, 1.0),
        ("1", ["one"] * 10, 0.0, 0.0),
        ("a dog", ["a dog"] * 10, 0.0, 1.0),
        ("dog", ["a dog"] * 10, 0.0, 0.0),
        ("dog", ["dog"] * 10, 1.0, 1.0),
        ("Dog", ["dog"] * 10, 1.0, 0.0),  # 2021 as written: no lower-casing when unanimous
        ("  dog\n", ["dog"] * 10, 1.0, 1.0),  # both trim
        # annotators disagree: 2021 normalises both sides in full, 2017 the annotators' marks only
        ("one", ["one"] * 4 + ["two"] * 6, 0.0, 1.0),
        ("1", ["one"] * 4 + ["two"] * 6, 0.0, 1.0),
        ("a dog", ["the dog"] * 4 + ["cat"] * 6, 0.0, 1.0),
        ("isnt", ["isn't"] * 3 + ["no"] * 7, 0.9, 0.9),  # a contraction: fixed on both sides
        ("dog", ["dog."] * 3 + ["cat"] * 7, 0.9, 0.9),
        ("dog!", ["dog"] * 3 + ["cat"] * 7, 0.9, 0.9),
    ],
)
def test_the_2017_and_2021_official_codes(prediction, answers, v2017, v2021):
    assert vqa_accuracy(prediction, answers) == pytest.approx(v2017)  # the default
    assert vqa_accuracy(prediction, answers, "2017") == pytest.approx(v2017)
    assert vqa_accuracy(prediction, answers, "2021") == pytest.approx(v2021)


def test_the_version_is_named_in_the_scores():
    samples = [qa("q1", ["one"] * 10)]
    assert vqa_scores({"q1": "one"}, samples)["vqa_eval"] == "2017"
    scores = vqa_scores({"q1": "one"}, samples, "2021")
    assert scores["vqa_eval"] == "2021" and scores["metrics"]["vqa_accuracy"] == 1.0
    with pytest.raises(ValueError, match="unknown VQA evaluation"):
        vqa_accuracy("one", ["one"] * 10, "2019")
