"""Batch collation for training and evaluation, run through a tiny model."""

import random

import pytest
import torch

from epalm.data.manifest import Sample
from epalm.tasks import Collator, is_empty, model_inputs
from epalm.testing import tiny_model
from epalm.testing.perceivers import sample_media
from epalm.text import IGNORE_INDEX

CAPTIONS = ["a red cat sleeps", "a cat", "one small red cat on a mat"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_model()


def item(model, sample, seed=0):
    return {
        "sample": sample,
        "inputs": {"image": model.perceivers["image"].preprocess(sample_media("image", seed))},
    }


def caption(id="coco-1"):
    return Sample(id, "train", "image", ["1.jpg"], captions=list(CAPTIONS))


def question(id="vqa-1"):
    answers = ["Two", "2", "3", "three", "2"]  # normalised: 2, 2, 3, 3, 2 -> "2"
    return Sample(id, "train", "image", ["2.jpg"], question="How many?", answers=answers)


def targets(model, batch):
    """The text each row is trained on, from its labels."""
    rows = [row[row != IGNORE_INDEX] for row in batch["labels"]]
    return [model.tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows]


def test_training_batch(model):
    items = [item(model, caption(), 0), item(model, question(), 1)]
    batch = Collator(model, train=False)(items)
    assert batch["ids"] == ["coco-1", "vqa-1"] and batch["skipped"] == []
    assert targets(model, batch) == [CAPTIONS[0], "2"]  # the first caption; the majority answer
    assert batch["media"]["image"]["pixel_values"].shape[0] == 2
    # Labels: ignored on the prompt and on padding, the token ids on the target and its eos.
    prompt = model.tokenizer(model.prompt_for("How many?"))["input_ids"]
    labels, ids, mask = batch["labels"][1], batch["input_ids"][1], batch["attention_mask"][1]
    assert ids[: len(prompt)].tolist() == prompt
    assert (labels[: len(prompt)] == IGNORE_INDEX).all()
    real = int(mask.sum())
    assert (labels[real:] == IGNORE_INDEX).all() and (mask[real:] == 0).all()  # right padding
    assert labels[real - 1] == model.tokenizer.eos_token_id
    assert labels[len(prompt) : real].tolist() == ids[len(prompt) : real].tolist()
    out = model(**model_inputs(batch))
    assert torch.isfinite(out.loss)


def test_training_picks_a_random_caption_repeatably(model):
    def picks(seed):
        collate = Collator(model, train=True, rng=random.Random(seed))
        return [targets(model, collate([item(model, caption())]))[0] for _ in range(12)]

    assert picks(1) == picks(1)
    assert set(picks(1)) <= set(CAPTIONS) and len(set(picks(1))) > 1
    assert targets(model, Collator(model, train=True)([item(model, question())])) == ["2"]


def test_bad_samples_are_listed_not_dropped_silently(model):
    items = [item(model, caption()), {"sample": question(), "error": "corrupt jpeg"}]
    batch = Collator(model, train=True)(items)
    assert batch["ids"] == ["coco-1"] and batch["skipped"] == [("vqa-1", "corrupt jpeg")]
    assert not is_empty(batch)
    only_bad = Collator(model, train=True)([{"sample": caption(), "error": "missing file"}])
    assert is_empty(only_bad) and only_bad["skipped"] == [("coco-1", "missing file")]
    assert "input_ids" not in only_bad


def test_generation_batch_is_left_padded_without_labels(model):
    batch = Collator(model, train=False, generation=True)(
        [item(model, caption(), 0), item(model, question(), 1)]
    )
    assert "labels" not in batch
    mask = batch["attention_mask"]
    assert mask[:, -1].all() and not mask[0, 0]  # the short caption prompt is padded on the left
    prompt = model.tokenizer(model.prompt_for("How many?"))["input_ids"]
    assert batch["input_ids"][1, -len(prompt) :].tolist() == prompt
    new = model.generate(**model_inputs(batch), max_new_tokens=3)
    assert new.shape[0] == 2 and new.shape[1] <= 3


def test_samples_must_fill_the_same_slots(model):
    bare = {"sample": caption("coco-2"), "inputs": {}}
    with pytest.raises(ValueError, match="same slots"):
        Collator(model, train=False)([item(model, caption()), bare])
    with pytest.raises(KeyError, match="no perceiver"):
        Collator(model, train=False)([{"sample": caption(), "inputs": {"audio": {}}}])


def feature_item(model, sample, seed=0):
    """An item as FeatureDataset gives it: the perceiver's output for one sample."""
    with torch.no_grad():
        features = model.perceivers["image"].encode([sample_media("image", seed)])[0]
    return {"sample": sample, "features": {"image": features}}


def test_feature_items_are_stacked_per_slot(model):
    items = [feature_item(model, caption(), 0), feature_item(model, question(), 1)]
    batch = Collator(model, train=False)(items)
    perceiver = model.perceivers["image"]
    assert batch["features"]["image"].shape == (2, perceiver.num_levels, perceiver.hidden_size)
    assert "media" not in batch and set(model_inputs(batch)) >= {"features", "labels"}
    media = Collator(model, train=False)([item(model, caption(), 0), item(model, question(), 1)])
    with torch.no_grad():
        torch.testing.assert_close(
            model(**model_inputs(batch)).loss, model(**model_inputs(media)).loss
        )
    with pytest.raises(ValueError, match="same slots"):
        Collator(model, train=False)([feature_item(model, caption()), item(model, question())])
    with pytest.raises(KeyError, match="no perceiver"):
        Collator(model, train=False)([{"sample": caption(), "features": {"audio": torch.zeros(2)}}])
