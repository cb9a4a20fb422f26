"""A result that is no result says so: generations broken, or no better than blind."""

import pytest

from epalm.training.sanity import generation_health, is_degenerate, sanity_warnings


@pytest.mark.parametrize(
    "text", ["", "   ", "...]...]...]...]", "poraryporaryporary", "the the the the", "!!!!!!!!"]
)
def test_broken_generations_are_degenerate(text):
    assert is_degenerate(text)


@pytest.mark.parametrize(
    "text", ["no", "yes", "2", "a red circle", "a beep then a chirp", "left left", "1 1 2"]
)
def test_real_answers_and_captions_are_not(text):
    assert not is_degenerate(text)


def test_a_run_no_better_than_blind_or_with_broken_generations_warns():
    fine = generation_health({"a": "a red circle", "b": "a blue square"})
    assert sanity_warnings(1.2, 0.1, fine) == []
    (blind,) = sanity_warnings(0.0, 0.0, fine)
    assert "no better than blind" in blind
    broken = generation_health({"a": "...]...]...]", "b": "poraryporaryporary", "c": "a cat"})
    assert broken["degenerate"] == pytest.approx(2 / 3)
    assert broken["examples"] == ["...]...]...]", "poraryporaryporary"]
    (loud,) = sanity_warnings(0.5, 0.1, broken)
    assert "67% of the generations" in loud
