"""The feature cache: entries equal the perceiver's own output, keyed by file content and by
everything the perceiver's output depends on; shared by ranks; never half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import epalm.data.feature_cache as fc
from epalm.data.dataset import FeatureDataset, MediaDataset, decode
from epalm.data.embedded import build_embedded
from epalm.data.feature_cache import FeatureCache, NotCachedError, weights_sha256
from epalm.data.manifest import read_manifest
from epalm.data.media import MediaError
from epalm.encoders import build_perceiver
from epalm.tasks import Collator, model_inputs
from epalm.testing import tiny_model
from epalm.testing.perceivers import tiny_perceiver_kwargs

DATASETS = {"image": "easy-vqa", "video": "shapes-video", "audio": "sound-scenes"}
MODALITIES = tuple(DATASETS)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """The tiny build of each modality's embedded dataset (real PNG, MP4, WAV files)."""
    cache_dir = tmp_path_factory.mktemp("datasets")
    return {
        m: build_embedded(name, size="tiny", cache_dir=cache_dir) for m, name in DATASETS.items()
    }


def media_paths(root):
    """Every media file of a dataset, each once."""
    splits = ("train", "val", "test")
    return sorted(
        {str(s.media_paths[0]) for x in splits for s in read_manifest(root / f"{x}.jsonl")}
    )


def tiny_perceiver(modality, **overrides):
    name, kwargs = tiny_perceiver_kwargs(modality)
    return build_perceiver(name, **{**kwargs, **overrides})


@pytest.fixture(scope="module")
def perceivers():
    return {m: tiny_perceiver(m) for m in MODALITIES}


def alone(perceiver, path):
    """What the perceiver gives the file on its own, with evaluation preprocessing."""
    with torch.no_grad():
        return perceiver(**perceiver.prepare([decode(path, perceiver, train=False)]))[0]


# --- the features ------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", MODALITIES)
def test_cached_features_are_the_perceivers_own(tmp_path, roots, perceivers, modality):
    perceiver, paths = perceivers[modality], media_paths(roots[modality])
    one = FeatureCache(perceiver, tmp_path / "one")
    assert one.fill(paths, batch_size=1, progress=False).computed == len(paths)
    batched = FeatureCache(perceiver, tmp_path / "batched")
    assert batched.fill(paths, batch_size=4, progress=False).computed == len(paths)
    one, batched = one.load(paths), batched.load(paths)
    for path in paths:
        want = alone(perceiver, path)
        assert one[path].dtype == torch.float32
        assert one[path].shape == (perceiver.num_levels, perceiver.hidden_size)
        assert torch.equal(one[path], want)  # one file per batch: bit for bit
        # batched matrix products may round the last bits differently, nothing more
        torch.testing.assert_close(batched[path], want, rtol=0, atol=1e-6)


def test_a_second_fill_computes_nothing_and_a_new_cache_object_loads(
    tmp_path, roots, perceivers, monkeypatch
):
    hashed = []
    monkeypatch.setattr(fc, "_SHA_MEMO", {})
    monkeypatch.setattr(fc, "sha256_of", lambda path: hashed.append(path) or f"{len(hashed):064x}")
    paths = media_paths(roots["image"])
    cache = FeatureCache(perceivers["image"], tmp_path)
    first = cache.fill(paths, progress=False)
    assert (first.computed, first.cached, first.skipped) == (len(paths), 0, [])
    second = cache.fill(paths, progress=False)
    assert (second.computed, second.cached) == (0, len(paths))
    assert cache.missing(paths) == []
    again = FeatureCache(perceivers["image"], tmp_path)  # as in the next run
    assert again.key == cache.key and again.directory == cache.directory
    assert set(again.load(paths)) == set(paths)
    assert len(hashed) == len(paths)  # every file hashed once in this process
    info = json.loads((cache.directory / "info.json").read_text())
    assert info["key"] == cache.key and info["perceiver"] == "image"
    assert info["config"]["image_size"] == 32


def test_load_names_the_files_not_cached(tmp_path, roots, perceivers):
    paths = media_paths(roots["image"])
    cache = FeatureCache(perceivers["image"], tmp_path)
    cache.fill(paths[:2], progress=False)
    assert cache.missing(paths) == [Path(p) for p in paths[2:]]
    with pytest.raises(NotCachedError, match=f"{len(paths) - 2} of {len(paths)} files") as raised:
        cache.load(paths)
    assert paths[2] in str(raised.value) and paths[0] not in str(raised.value)
    last = cache.load(paths[:2], levels=1)[paths[0]]
    torch.testing.assert_close(last, cache.load(paths[:1])[paths[0]][-1:])


# --- what keys an entry ------------------------------------------------------------------------
def test_an_edited_file_misses_and_a_copy_hits(tmp_path, roots, perceivers):
    first, second = media_paths(roots["image"])[:2]
    path, copy = tmp_path / "edited.png", tmp_path / "copy.png"
    shutil.copy(first, path)
    shutil.copy(first, copy)
    cache = FeatureCache(perceivers["image"], tmp_path / "cache")
    cache.fill([path], progress=False)
    assert cache.missing([copy]) == []  # same bytes, other name
    torch.testing.assert_close(cache.load([copy])[str(copy)], cache.load([path])[str(path)])
    shutil.copy(second, path)  # new content under the old name
    assert cache.missing([path]) == [path]
    assert cache.fill([path], progress=False).computed == 1
    assert torch.equal(cache.load([path])[str(path)], alone(perceivers["image"], second))


@pytest.mark.parametrize(
    "change",
    [{"image_size": 48}, {"seed": 1}],
    ids=["preprocessing", "weights"],
)
def test_other_settings_or_weights_use_other_entries(tmp_path, roots, perceivers, change):
    paths = media_paths(roots["image"])[:2]
    cache = FeatureCache(perceivers["image"], tmp_path)
    cache.fill(paths, progress=False)
    assert FeatureCache(tiny_perceiver("image"), tmp_path).key == cache.key  # rebuilt alike
    other = FeatureCache(tiny_perceiver("image", **change), tmp_path)
    assert other.key != cache.key and other.directory != cache.directory
    assert other.missing(paths) == [Path(p) for p in paths]


def _vit_checkpoint(directory, mean):
    """A local HF ViT checkpoint (random tiny weights, seed 0) with a preprocessor config."""
    from transformers import ViTImageProcessor, ViTModel

    from epalm.testing.perceivers import TINY_VIT

    torch.manual_seed(0)
    config = {k: v for k, v in TINY_VIT.items() if k != "model_type"}
    ViTModel(ViTModel.config_class(**config)).save_pretrained(directory)
    ViTImageProcessor(image_mean=mean, image_std=[0.5] * 3).save_pretrained(directory)
    return str(directory)


def test_the_key_holds_the_mean_and_std_a_checkpoint_brings(tmp_path):
    """One checkpoint whose preprocessor config's mean changed: the same settings and weights,
    other pixels, so another entry; a preprocessor config that cannot be read is an error."""
    first = build_perceiver("image", model=_vit_checkpoint(tmp_path / "vit", [0.5] * 3))
    second = build_perceiver("image", model=_vit_checkpoint(tmp_path / "vit", [0.4] * 3))
    assert first.config() == second.config()
    assert weights_sha256(first) == weights_sha256(second)
    assert first.image_mean == (0.5,) * 3 and second.image_mean == (0.4,) * 3
    assert FeatureCache(first, tmp_path).key != FeatureCache(second, tmp_path).key

    (tmp_path / "vit" / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="gives no image mean and std"):
        build_perceiver("image", model=str(tmp_path / "vit"))


def test_the_weights_digest_sees_every_tensor(perceivers):
    perceiver = tiny_perceiver("image")
    before = fc.weights_sha256(perceiver)
    with torch.no_grad():
        next(iter(perceiver.parameters())).view(-1)[0] += 1e-3
    assert fc.weights_sha256(perceiver) != before == fc.weights_sha256(perceivers["image"])


# --- ranks -------------------------------------------------------------------------------------
RANK = """
import json, sys
from epalm.data.feature_cache import FeatureCache
from epalm.encoders import build_perceiver
from epalm.testing.perceivers import tiny_perceiver_kwargs
rank, cache_dir, paths = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
name, kwargs = tiny_perceiver_kwargs("image")
report = FeatureCache(build_perceiver(name, **kwargs), cache_dir).fill(
    paths, rank=rank, world_size=2, batch_size=2, progress=False
)
print(json.dumps([report.computed, report.cached, report.other_ranks]))
"""


def test_two_ranks_share_the_work(tmp_path, roots, perceivers):
    paths = media_paths(roots["image"])
    assert len(paths) % 2 == 0
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(rank), str(tmp_path), json.dumps(paths)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    reports = []
    for process in ranks:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    half = len(paths) // 2
    # each computed its own half, none twice; the other half was cached or left to the other
    # rank, depending on which rank got there first
    assert [computed for computed, _, _ in reports] == [half, half]
    assert all(cached + others == half for _, cached, others in reports)
    cache = FeatureCache(perceivers["image"], tmp_path)  # after the barrier: everything there
    assert cache.missing(paths) == [] and len(cache.load(paths)) == len(paths)
    assert len(list(cache.directory.glob("*/*.safetensors"))) == len(paths)


def test_the_split_by_content_ignores_what_is_cached(tmp_path, roots, perceivers):
    """A rank that starts late, after the other wrote entries, still takes the same share."""
    paths = media_paths(roots["image"])
    cache = FeatureCache(perceivers["image"], tmp_path)
    late = cache.fill(paths[:3], progress=False)  # some files cached by an earlier run
    shares = [cache.fill(paths, rank=r, world_size=2, progress=False) for r in (0, 1)]
    assert late.computed + sum(s.computed for s in shares) == len(paths)
    assert cache.missing(paths) == []


# --- crashes and bad files ---------------------------------------------------------------------
def test_a_killed_writer_leaves_no_entry(tmp_path, roots, perceivers, monkeypatch):
    paths = media_paths(roots["image"])[:2]
    cache = FeatureCache(perceivers["image"], tmp_path)

    def dies_halfway(tensors, tmp):
        with open(tmp, "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{")  # a header begun, never finished
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(fc, "save_file", dies_halfway)
        with pytest.raises(KeyboardInterrupt):
            cache.fill(paths, progress=False)
    assert not list(cache.directory.glob("*/*")), "an entry or its temporary file was left"
    # SIGKILL between writing and renaming would leave the temporary file: it is never read
    sha = fc.content_sha256(paths[0])
    cache.entry(sha).parent.mkdir(parents=True)
    leftover = cache.entry(sha).parent / f".{sha}.safetensors.abc123"
    leftover.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    assert cache.missing(paths) == [Path(p) for p in paths]
    assert cache.fill(paths, progress=False).computed == 2
    assert torch.equal(cache.load(paths)[paths[0]], alone(perceivers["image"], paths[0]))


def test_a_truncated_entry_is_detected_and_recomputed(tmp_path, roots, perceivers):
    paths = media_paths(roots["image"])[:2]
    cache = FeatureCache(perceivers["image"], tmp_path)
    cache.fill(paths, progress=False)
    want = cache.load(paths)[paths[0]]
    entry = cache.entry(fc.content_sha256(paths[0]))
    entry.write_bytes(entry.read_bytes()[:-7])  # e.g. a disk that filled up
    assert cache.missing(paths) == [Path(paths[0])]
    with pytest.raises(NotCachedError, match="corrupt entry"):
        cache.load(paths)
    report = cache.fill(paths, progress=False)
    assert (report.computed, report.cached) == (1, 1)
    assert torch.equal(cache.load(paths)[paths[0]], want)


@pytest.fixture
def with_bad_files(tmp_path, roots):
    """Good images plus a corrupt PNG, a truncated PNG, an empty file and a missing one."""
    good = media_paths(roots["image"])[:3]
    corrupt, truncated = tmp_path / "corrupt.png", tmp_path / "truncated.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    truncated.write_bytes(Path(good[0]).read_bytes()[:60])
    (tmp_path / "empty.png").write_bytes(b"")
    bad = [str(corrupt), str(truncated), str(tmp_path / "empty.png"), str(tmp_path / "gone.png")]
    return good, bad


def test_bad_files_raise_naming_the_file(tmp_path, perceivers, with_bad_files):
    good, bad = with_bad_files
    cache = FeatureCache(perceivers["image"], tmp_path / "cache")
    with pytest.raises(MediaError, match=r"corrupt\.png: not an image"):
        cache.fill([*good, bad[0]], progress=False)
    with pytest.raises(MediaError, match=r"gone\.png: no such file"):
        cache.fill([*good, bad[-1]], progress=False)


def test_skipped_bad_files_are_reported_and_the_rest_cached(tmp_path, perceivers, with_bad_files):
    good, bad = with_bad_files
    cache = FeatureCache(perceivers["image"], tmp_path / "cache")
    # one DataLoader worker: error items come back from another process
    report = cache.fill([*good, *bad], on_bad_sample="skip", num_workers=1, progress=False)
    assert report.computed == len(good)
    reasons = dict(report.skipped)
    assert sorted(reasons) == sorted(bad)
    assert reasons[bad[0]] == f"{bad[0]}: not an image (no format Pillow knows)"
    assert reasons[bad[1]].startswith(f"{bad[1]}: ")
    assert reasons[bad[2]] == f"{bad[2]}: empty file (0 bytes)"
    assert reasons[bad[3]] == f"{bad[3]}: no such file"
    assert sorted(map(str, cache.missing([*good, *bad]))) == sorted(bad)
    assert set(cache.load(good)) == set(good)


# --- training from the cache -------------------------------------------------------------------
@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("connector", ["ep-alm", "all-tokens", "token-learner"])
def test_training_from_the_cache_gives_the_loss_of_training_from_media(
    tmp_path, roots, modality, connector
):
    """Summaries for eP-ALM's connector, float16 tokens for those that read tokens."""
    torch.manual_seed(0)
    levels = 2 if connector == "ep-alm" else 1
    model = tiny_model(modalities=[modality], name=connector, levels=levels).eval()
    samples = read_manifest(roots[modality] / "train.jsonl")
    paths = sorted({str(s.media_paths[0]) for s in samples})
    reads_tokens = model.connectors[modality].reads == "tokens"
    cache = FeatureCache(
        model.perceivers[modality], tmp_path, tokens=levels if reads_tokens else None
    )
    cache.fill(paths, progress=False)
    collate = Collator(model, train=False)
    datasets = {
        "media": MediaDataset(samples, model.perceivers, train=False),
        "features": FeatureDataset(samples, {modality: cache.load(paths)}),
    }
    losses = {}
    for name, dataset in datasets.items():
        batch = next(iter(DataLoader(dataset, batch_size=len(samples), collate_fn=collate)))
        assert name in batch and not batch["skipped"]
        if name == "features" and not reads_tokens:
            levels, hidden = (
                model.perceivers[modality].num_levels,
                model.perceivers[modality].hidden_size,
            )
            assert batch["features"][modality].shape == (len(samples), levels, hidden)
            assert "media" not in batch
        with torch.no_grad():
            losses[name] = model(**model_inputs(batch)).loss
    torch.testing.assert_close(losses["features"], losses["media"], rtol=0, atol=1e-5)


def test_feature_datasets_name_samples_without_features(tmp_path, roots, perceivers):
    samples = read_manifest(roots["image"] / "train.jsonl")
    paths = sorted({str(s.media_paths[0]) for s in samples})
    cache = FeatureCache(perceivers["image"], tmp_path)
    cache.fill(paths[1:], progress=False)
    features = {"image": cache.load(paths[1:])}
    with pytest.raises(ValueError, match=r"no features for \d+ of \d+ samples.*image: "):
        FeatureDataset(samples, features)
    with pytest.raises(ValueError, match="slots given: \\['image'\\]"):
        FeatureDataset(read_manifest(roots["audio"] / "train.jsonl"), features)
    dataset = FeatureDataset(samples, features, on_bad_sample="skip")
    items = [dataset[i] for i in range(len(dataset))]
    errors = [item["error"] for item in items if "error" in item]
    assert errors and all(e.startswith(f"{paths[0]}: no cached features") for e in errors)


# --- token features (connectors that read every token) ------------------------------------------
@pytest.mark.parametrize("modality", MODALITIES)
def test_cached_tokens_are_bit_identical_to_a_fresh_encode(tmp_path, roots, perceivers, modality):
    from epalm.encoders.base import token_features

    perceiver, paths = perceivers[modality], media_paths(roots[modality])
    cache = FeatureCache(perceiver, tmp_path, tokens=2)
    assert cache.fill(paths, batch_size=1, progress=False).computed == len(paths)
    assert cache.directory != FeatureCache(perceiver, tmp_path).directory  # a key of its own
    assert cache.size_on_disk() > 0
    loaded = cache.load(paths)
    for path in paths:
        inputs = perceiver.prepare([decode(path, perceiver, train=False)])
        fresh = token_features(perceiver, 2, **inputs)
        entry = loaded[path]
        assert entry["tokens"].dtype == torch.float16 and entry["tokens"].shape[0] == 2
        assert torch.equal(entry["tokens"], fresh["tokens"][0])
        assert torch.equal(entry["mask"], fresh["mask"][0])
        assert entry["tokens"].shape[-1] == perceiver.token_size


def test_a_truncated_token_entry_is_recomputed(tmp_path, roots, perceivers):
    paths = media_paths(roots["image"])[:1]
    cache = FeatureCache(perceivers["image"], tmp_path, tokens=1)
    cache.fill(paths, progress=False)
    entry = next(cache.directory.glob("*/*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:-10])
    with pytest.raises(NotCachedError, match="corrupt entry"):
        cache.load(paths)
    assert cache.fill(paths, progress=False).computed == 1
    assert set(cache.load(paths)) == set(paths)
