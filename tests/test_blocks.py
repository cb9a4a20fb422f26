"""Running a perceiver's top from the hidden state that enters a block: which block a run
changes first, the summary from there equals the whole forward's, the feature cache stores that
hidden state (real files), and gradients reach only the top."""

from __future__ import annotations

import pytest
import torch
from test_feature_cache import MODALITIES, media_paths, roots, tiny_perceiver  # noqa: F401

from epalm.data.dataset import decode
from epalm.data.feature_cache import FeatureCache
from epalm.encoders.blocks import backbone_of, encoder_blocks, run_blocks
from epalm.retrieval.align import apply_align
from epalm.tasks.collate import stack_features
from epalm.testing import tiny_dual_encoder
from epalm.testing.perceivers import sample_media

pytestmark = pytest.mark.core


def top_trained(modality: str, layers: int = 1):
    """A tiny dual encoder whose towers train their last ``layers`` blocks."""
    return tiny_dual_encoder(modality, align="last-layers", align_kwargs={"layers": layers})


@pytest.mark.parametrize("modality", MODALITIES)
def test_the_first_changed_block_is_the_lowest_trained_one(modality):
    blocks = 4  # every tiny perceiver
    for layers in (1, 2):  # the tiny text tower has 2
        perceiver = top_trained(modality, layers).perceiver
        assert perceiver.first_changed_block() == blocks - layers
    assert tiny_dual_encoder(modality, align="heads").perceiver.first_changed_block() is None
    for bottom_too in ("adapters", "layernorm", "full"):  # block 0 or the embeddings change
        assert tiny_dual_encoder(modality, align=bottom_too).perceiver.first_changed_block() == 0


def test_a_change_below_the_blocks_leaves_nothing_to_cache():
    perceiver = top_trained("image").perceiver
    backbone_of(perceiver).embeddings.patch_embeddings.projection.weight.requires_grad_(True)
    assert perceiver.first_changed_block() == 0


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("start", [1, 3])
def test_the_top_from_a_blocks_input_gives_the_whole_forwards_summary(modality, start):
    perceiver = tiny_perceiver(modality).eval()
    media = [sample_media(modality, seed=i) for i in range(3)]
    if modality == "audio":  # clips of different lengths: the mask keeps the real tokens
        media[1] = media[1][: len(media[1]) // 2]
    inputs = perceiver.prepare(media)
    with torch.no_grad():
        whole = perceiver(**inputs)[:, -1]
        entering = perceiver.block_input(start, **inputs)
        top = perceiver.from_block(start, **entering)
    torch.testing.assert_close(top, whole, rtol=0, atol=1e-4)  # attention kernels may differ
    # a different block's input is a different tensor: the capture stops at the block asked for
    with torch.no_grad():
        other = perceiver.block_input(start - 1, **inputs)["hidden"]
    assert other.shape == entering["hidden"].shape and not torch.allclose(other, entering["hidden"])


def test_gradients_from_a_blocks_input_reach_only_the_top():
    model = top_trained("image")
    inputs = model.preprocess([sample_media("image", seed=i) for i in range(2)])
    with torch.no_grad():
        entering = model.perceiver.block_input(3, **inputs)
    model.embed_media(features=entering).sum().backward()
    blocks = encoder_blocks(backbone_of(model.perceiver))
    assert all(p.grad is not None for p in blocks[3].parameters())
    assert all(p.grad is None for p in blocks[:3].parameters())


def test_features_of_a_block_input_are_refused_where_the_bottom_trains():
    model = tiny_dual_encoder("image", align="adapters")
    entering = {"hidden": torch.zeros(1, 17, 32), "mask": torch.ones(1, 17, dtype=torch.long)}
    with pytest.raises(ValueError, match="trains from its bottom"):
        model.embed_media(features=entering)


@pytest.mark.parametrize("modality", MODALITIES)
def test_the_cache_holds_what_enters_the_block(tmp_path, roots, modality):  # noqa: F811
    model = top_trained(modality)
    perceiver, paths = model.perceiver, media_paths(roots[modality])[:6]
    cache = FeatureCache(perceiver, tmp_path, below=3)
    assert cache.directory.name.startswith(f"{perceiver.registry_name}-block3-")
    assert cache.fill(paths, batch_size=4, progress=False).computed == len(paths)
    loaded = cache.load(paths)
    for path in paths:
        inputs = perceiver.prepare([decode(path, perceiver, train=False)])
        with torch.no_grad():
            want = perceiver.block_input(3, **inputs)
        assert loaded[path]["hidden"].dtype == torch.float32
        torch.testing.assert_close(loaded[path]["hidden"], want["hidden"][0], rtol=0, atol=1e-5)
        assert torch.equal(loaded[path]["mask"], want["mask"][0])
    # a batch from the cache gives the summaries the media give, file by file
    batch = stack_features([loaded[p] for p in paths])
    with torch.no_grad():
        cached = perceiver.from_block(3, batch["hidden"], batch["mask"])
        for row, path in enumerate(paths):
            inputs = perceiver.prepare([decode(path, perceiver, train=False)])
            torch.testing.assert_close(cached[row], perceiver(**inputs)[0, -1], atol=1e-5, rtol=0)


def test_the_cache_refuses_a_block_the_perceiver_does_not_have(tmp_path):
    perceiver = tiny_perceiver("image")
    for below in (0, 4):
        with pytest.raises(ValueError, match=r"a block of 1\.\.3"):
            FeatureCache(perceiver, tmp_path, below=below)


def test_a_block_whose_forward_needs_more_than_hidden_states_is_an_error():
    class Gated(torch.nn.Module):
        def forward(self, hidden_states, gate):
            return hidden_states * gate

    with pytest.raises(TypeError, match=r"requires \['gate'\]"):
        run_blocks(torch.nn.ModuleList([Gated()]), torch.zeros(1, 2, 3), 0)


def test_align_leaves_the_first_changed_block_to_the_variant():
    model = tiny_dual_encoder("image", align="heads")
    apply_align("last-layers", model, layers=2)
    assert model.perceiver.first_changed_block() == 2
