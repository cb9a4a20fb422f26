"""MediaDataset: real files decoded and preprocessed by tiny perceivers; bad samples raised with
their id and file, or handed back as error items (never dropped silently)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from test_media import tone, write_clip
from torch.utils.data import DataLoader

from epalm.data.dataset import BadSampleError, MediaDataset
from epalm.data.manifest import Sample
from epalm.data.media import MediaError
from epalm.encoders import Perceiver, build_perceiver
from epalm.testing.perceivers import sample_media, tiny_perceiver_kwargs

MODALITIES = ("image", "video", "audio")


@pytest.fixture(scope="module")
def perceivers():
    built = {}
    for modality in MODALITIES:
        name, kwargs = tiny_perceiver_kwargs(modality)
        built[modality] = build_perceiver(name, **kwargs)
    return built


@pytest.fixture
def files(tmp_path):
    """One real file per modality, plus a zero-byte one."""
    Image.fromarray(sample_media("image")).save(tmp_path / "a.png")
    write_clip(tmp_path / "a.mp4")
    soundfile.write(tmp_path / "a.flac", tone(22_050, hz=440.0), 22_050)
    (tmp_path / "empty.png").write_bytes(b"")
    return {"image": "a.png", "video": "a.mp4", "audio": "a.flac", "empty": "empty.png"}


def sample(root, id, modality, *media):
    return Sample(id, "train", modality, list(media), captions=["a caption"], root=root)


def test_items_hold_what_the_perceiver_makes_of_the_file(tmp_path, files, perceivers):
    samples = [sample(tmp_path, m, m, files[m]) for m in MODALITIES]
    dataset = MediaDataset(samples, perceivers, train=False)
    assert len(dataset) == 3
    for index, modality in enumerate(MODALITIES):
        item = dataset[index]
        assert item["sample"] is samples[index] and list(item["inputs"]) == [modality]
        want = perceivers[modality].preprocess(tmp_path / files[modality])
        for key, value in want.items():
            torch.testing.assert_close(item["inputs"][modality][key], value)


def test_training_items_are_augmented(tmp_path, files, perceivers):
    dataset = MediaDataset([sample(tmp_path, "i", "image", files["image"])], perceivers, train=True)
    a, b = (dataset[0]["inputs"]["image"]["pixel_values"] for _ in range(2))
    assert not torch.equal(a, b)


def test_multi_file_samples_use_their_first_file(tmp_path, files, perceivers):
    dataset = MediaDataset(
        [sample(tmp_path, "two", "image", files["image"], files["empty"])], perceivers, train=False
    )
    assert "inputs" in dataset[0]


def test_a_modality_without_perceiver_fails_at_construction(tmp_path, files, perceivers):
    samples = [
        sample(tmp_path, "ok", "image", files["image"]),
        sample(tmp_path, "depth-1", "depth", "d.png"),
        sample(tmp_path, "depth-2", "depth", "d.png"),
    ]
    with pytest.raises(ValueError, match=r"'depth-1' has modality 'depth'.*'audio'"):
        MediaDataset(samples, perceivers, train=False)
    with pytest.raises(ValueError, match="on_bad_sample"):
        MediaDataset(samples[:1], perceivers, train=False, on_bad_sample="drop")


def test_error_mode_raises_naming_sample_file_and_reason(tmp_path, files, perceivers):
    dataset = MediaDataset(
        [sample(tmp_path, "bad-1", "image", files["empty"])], perceivers, train=False
    )
    with pytest.raises(BadSampleError) as raised:
        dataset[0]
    message = str(raised.value)
    assert "'bad-1'" in message and str(tmp_path / "empty.png") in message and "empty" in message
    assert isinstance(raised.value.__cause__, MediaError)


def test_skip_mode_hands_back_every_bad_sample(tmp_path, files, perceivers):
    samples = [
        sample(tmp_path, "good", "image", files["image"]),
        sample(tmp_path, "empty", "image", files["empty"]),
        sample(tmp_path, "missing", "audio", "gone.wav"),
        sample(tmp_path, "wrong-kind", "video", files["audio"]),  # FLAC given as a video
    ]
    dataset = MediaDataset(samples, perceivers, train=False, on_bad_sample="skip")
    # a collator in a DataLoader worker gets the error items and can report them
    loader = DataLoader(dataset, batch_size=4, num_workers=1, collate_fn=list)
    items = next(iter(loader))
    assert "inputs" in items[0] and "error" not in items[0]
    errors = {item["sample"].id: item["error"] for item in items if "error" in item}
    assert sorted(errors) == ["empty", "missing", "wrong-kind"]
    assert errors["empty"] == f"{tmp_path / 'empty.png'}: empty file (0 bytes)"
    assert errors["missing"].startswith(f"{tmp_path / 'gone.wav'}: no such file")
    assert errors["wrong-kind"].startswith(f"{tmp_path / 'a.flac'}: no video stream")


class FailingPerceiver(Perceiver):
    """Decodes fine, fails in preprocessing (as a shape mismatch would)."""

    modality = "image"

    def preprocess(self, media, *, train=False):
        raise RuntimeError(f"cannot use an image of shape {np.shape(media)}")

    def config(self):
        return {}


def test_preprocessing_failures_are_bad_samples_too(tmp_path, files):
    samples = [sample(tmp_path, "s", "image", files["image"])]
    perceivers = {"image": FailingPerceiver()}
    with pytest.raises(BadSampleError, match=r"'s': .*a\.png: RuntimeError.*shape \(48, 40, 3\)"):
        MediaDataset(samples, perceivers, train=False)[0]
    item = MediaDataset(samples, perceivers, train=False, on_bad_sample="skip")[0]
    assert item["error"].startswith(f"{tmp_path / 'a.png'}: RuntimeError")
