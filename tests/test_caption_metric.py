"""Caption metrics (pycocoevalcap) on cases whose values are known, with and without Java."""

import json

import pytest

from epalm.tasks import caption_scores, java_available, write_predictions
from epalm.tasks.cococaption import simple_tokenize

# Distinct sentences, so CIDEr's document frequencies give their n-grams weight (an n-gram in
# every image's references is worth nothing), each long enough for 4-grams.
CAPTIONS = {
    "coco-1": "A man riding a red bicycle down a busy city street.",
    "coco-2": "Two cats sleeping together on a soft blue sofa.",
    "coco-3": "A plate of pasta with tomato sauce and fresh basil.",
    "coco-4": "Children playing football in a green park at sunset.",
}
REFERENCES = {i: [c] for i, c in CAPTIONS.items()}
DISJOINT = {i: f"zebra {i[-1]} xylophone quartz volcano jumps" for i in CAPTIONS}
needs_java = pytest.mark.skipif(not java_available(), reason="java is not on PATH")


def check_identical(metrics):
    for n in range(1, 5):
        assert metrics[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["ROUGE-L"] == pytest.approx(1.0)
    # CIDEr-D: cosine similarity 1 for every n-gram order, times 10.
    assert metrics["CIDEr"] == pytest.approx(10.0, rel=1e-3)


def check_disjoint(metrics):
    assert all(value == pytest.approx(0.0, abs=1e-3) for value in metrics.values()), metrics


@needs_java
def test_with_java_per_sample():
    # One run (METEOR takes seconds to start): two captions exact, two sharing no word.
    mixed = {i: CAPTIONS[i] if i in ("coco-1", "coco-2") else DISJOINT[i] for i in CAPTIONS}
    result = caption_scores(mixed, REFERENCES)
    assert result["tokenizer"] == "ptb" and result["notes"] == []
    assert result["count"] == 4 and result["missing"] == 0
    assert set(result["metrics"]) == {
        *(f"BLEU-{n}" for n in range(1, 5)),
        "METEOR",
        "ROUGE-L",
        "CIDEr",
    }
    for i in ("coco-1", "coco-2"):
        check_identical(result["per_sample"][i])
        assert result["per_sample"][i]["METEOR"] > 0.95
    for i in ("coco-3", "coco-4"):
        check_disjoint(result["per_sample"][i])
    # Corpus BLEU pools n-gram counts: half the candidates' 4-grams match, not 1 or 0.
    assert 0.1 < result["metrics"]["BLEU-4"] < 0.9


def test_without_java_meteor_is_skipped_and_said(caplog):
    for predictions, check in ((CAPTIONS, check_identical), (DISJOINT, check_disjoint)):
        result = caption_scores(predictions, REFERENCES, java=False)
        check(result["metrics"])
        check(result["per_sample"]["coco-2"])
        assert "METEOR" not in result["metrics"] and result["tokenizer"] == "simple"
        assert "java not found" in result["notes"][0]
    assert "METEOR skipped" in caplog.text


def test_simple_tokenizer_drops_punctuation_and_case():
    assert simple_tokenize("A Dog's 'toy', running... (fast)!") == "a dog's toy running fast"


def test_missing_and_unknown_predictions():
    partial = {i: c for i, c in CAPTIONS.items() if i != "coco-4"}
    result = caption_scores(partial, REFERENCES, java=False)
    assert result["missing"] == 1 and "coco-4" in result["notes"][0]
    assert result["metrics"]["ROUGE-L"] == pytest.approx(0.75)  # three perfect, one empty
    with pytest.raises(ValueError, match="without references"):
        caption_scores({**CAPTIONS, "coco-9": "a dog"}, REFERENCES, java=False)


def test_caption_predictions_file(tmp_path):
    path = tmp_path / "captions.json"
    write_predictions(path, {"coco-391895": "A man on a bike."}, "caption")
    assert json.loads(path.read_text()) == [{"image_id": 391895, "caption": "A man on a bike."}]
    with pytest.raises(ValueError, match="same official id"):
        write_predictions(path, {"coco-1": "a", "flickr-1": "b"}, "caption")
    with pytest.raises(ValueError, match="unknown task"):
        write_predictions(path, {"coco-1": "a"}, "retrieval")
