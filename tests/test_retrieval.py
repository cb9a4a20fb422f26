"""Contrastive alignment and retrieval: the loss, its gradient across processes, the metrics,
the index, and the offline text encoder (real weights)."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import free_port
from safetensors.torch import load_file, save_file
from torch import nn

from epalm.retrieval import RetrievalIndex, Temperature, contrastive_loss, retrieval_recalls
from epalm.retrieval.metrics import relevance

pytestmark = pytest.mark.core


# --- the loss ----------------------------------------------------------------------------------
def test_loss_is_the_symmetric_infonce_written_out():
    media, text, scale = torch.randn(5, 8), torch.randn(5, 8), torch.tensor(14.0)
    m, t = F.normalize(media, dim=-1), F.normalize(text, dim=-1)
    terms = []
    for i in range(5):  # each pair's two cross-entropies, from the definition
        logits_m = [scale * (m[i] @ t[j]) for j in range(5)]
        logits_t = [scale * (t[i] @ m[j]) for j in range(5)]
        terms.append(-logits_m[i] + math.log(sum(math.exp(x) for x in logits_m)))
        terms.append(-logits_t[i] + math.log(sum(math.exp(x) for x in logits_t)))
    expected = sum(terms) / 10
    assert contrastive_loss(media, text, scale).item() == pytest.approx(float(expected), rel=1e-5)


def test_matching_pairs_give_a_lower_loss_than_shuffled_ones():
    text = torch.randn(16, 8)
    media = text + 0.1 * torch.randn(16, 8)
    scale = Temperature()()
    assert contrastive_loss(media, text, scale) < contrastive_loss(media.roll(1, 0), text, scale)


def test_temperature_starts_at_its_value_and_is_clamped():
    temperature = Temperature(initial=0.07, max_scale=100.0)
    assert temperature().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        temperature.log_scale.fill_(10.0)  # e^10 would be a scale of 22,026
    assert temperature().item() == 100.0
    with pytest.raises(ValueError, match=r"initial=0\.001"):
        Temperature(initial=0.001)


def test_loss_refuses_unpaired_shapes():
    with pytest.raises(ValueError, match=r"media \(4, 8\) and text \(3, 8\)"):
        contrastive_loss(torch.randn(4, 8), torch.randn(3, 8), torch.tensor(1.0))


# --- across processes --------------------------------------------------------------------------
class Heads(nn.Module):
    """Two projection heads and a temperature: the trainable part of a dual encoder."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.media, self.text, self.temperature = nn.Linear(6, 4), nn.Linear(5, 4), Temperature()

    def forward(self, media, text, gather=True):
        return contrastive_loss(self.media(media), self.text(text), self.temperature(), gather)


def _gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _rank(rank, world, port, media, text, shards, out, gather):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    model = nn.parallel.DistributedDataParallel(Heads())
    rows = shards[rank]
    model(media[rows], text[rows], gather).backward()  # DDP averages the gradients
    if rank == 0:
        save_file(_gradients(model.module), out)
    dist.destroy_process_group()


@pytest.mark.parametrize("shards", [[range(0, 4), range(4, 8)], [range(0, 5), range(5, 8)]],
                         ids=["4+4", "5+3"])  # fmt: skip
def test_two_processes_give_the_gradient_of_one_process_with_the_global_batch(tmp_path, shards):
    """Two gloo processes with half the batch each, under DDP, get the gradient of one process
    holding the whole batch; without gathering (LilT's local negatives) they do not."""
    media, text = torch.randn(8, 6), torch.randn(8, 5)
    single = Heads()
    single(media, text).backward()
    expected = _gradients(single)
    for gather in (True, False):
        out = tmp_path / f"gather-{gather}.safetensors"
        mp.spawn(_rank, args=(2, free_port(), media, text, shards, str(out), gather), nprocs=2)
        got = load_file(out)
        same = all(torch.allclose(got[n], expected[n], atol=1e-6) for n in expected)
        assert same == gather, {n: (got[n] - expected[n]).abs().max().item() for n in expected}


# --- the metrics -------------------------------------------------------------------------------
def test_recalls_on_a_hand_made_case():
    # three items, four captions; items 1 and 2 share a caption, so either one is a hit for it
    items = [["a red circle", "a round red shape"], ["a blue square"], ["a blue square"]]
    captions = ["a red circle", "a round red shape", "a blue square", "a blue square"]
    relevant = relevance(items, captions)
    assert relevant.tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 1], [0, 1, 1]]
    similarity = torch.tensor(
        [  # rows: captions; columns: items
            [0.9, 0.1, 0.0],  # right at 1
            [0.1, 0.2, 0.9],  # right only at 3
            [0.0, 0.1, 0.8],  # item 2 first: a hit, it has the same caption
            [0.7, 0.2, 0.1],  # right at 2
        ]
    )
    recalls = retrieval_recalls(similarity, relevant, ks=(1, 2))
    assert recalls["text_to_media_r@1"] == pytest.approx(50.0)  # captions 0 and 2
    assert recalls["text_to_media_r@2"] == pytest.approx(75.0)  # and caption 3
    # items -> captions: item 0 ranks caption 0 first; item 1 ranks caption 1 (0.2), then the
    # two "a blue square" (0.2 tie, 0.1): at 2 a hit either way; item 2 ranks caption 1 first
    assert recalls["media_to_text_r@1"] == pytest.approx(100 / 3)
    assert recalls["media_to_text_r@2"] == pytest.approx(100.0)
    assert recalls["mean_recall"] == pytest.approx((50 + 75 + 100 / 3 + 100) / 4)


def test_recalls_refuse_a_caption_without_an_item():
    with pytest.raises(ValueError, match="every caption needs a relevant item"):
        retrieval_recalls(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))


# --- the index ---------------------------------------------------------------------------------
def _brute_force(gallery, queries, k):
    return (F.normalize(queries, dim=-1) @ F.normalize(gallery, dim=-1).T).topk(k, dim=1)


@pytest.mark.parametrize("kind", ["exact", "faiss-flat"])
def test_exact_indexes_return_the_brute_force_top_k(tmp_path, kind):
    gallery, queries = torch.randn(500, 32), torch.randn(20, 32)
    index = RetrievalIndex(gallery, [f"item-{i}" for i in range(500)], kind=kind)
    hits = index.search(queries, k=10)
    expected = _brute_force(gallery, queries, 10)
    assert torch.equal(hits.indices, expected.indices)
    torch.testing.assert_close(hits.scores, expected.values, atol=1e-5, rtol=1e-5)
    assert hits.keys[0] == [f"item-{i}" for i in expected.indices[0].tolist()]
    reloaded = RetrievalIndex.load(index.save(tmp_path / "index"))
    assert reloaded.kind == kind
    assert torch.equal(reloaded.search(queries, k=10).indices, hits.indices)


def test_the_graph_index_finds_nearly_all_of_the_true_neighbours(tmp_path):
    gallery, queries = torch.randn(3000, 32), torch.randn(50, 32)
    index = RetrievalIndex(gallery, [str(i) for i in range(3000)], kind="faiss-hnsw")
    expected = _brute_force(gallery, queries, 10).indices
    for searched in (index, RetrievalIndex.load(index.save(tmp_path / "hnsw"))):
        found = searched.search(queries, k=10).indices
        overlap = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), expected.tolist()))
        assert overlap / expected.numel() > 0.95


def test_auto_picks_exact_for_a_small_gallery_and_checks_its_input(tmp_path):
    assert RetrievalIndex(torch.randn(10, 4), list("abcdefghij")).kind == "exact"
    with pytest.raises(ValueError, match="3 keys"):
        RetrievalIndex(torch.randn(10, 4), ["a", "b", "c"])
    with pytest.raises(ValueError, match="not a saved retrieval index"):
        RetrievalIndex.load(tmp_path)


# --- the offline text encoder (real weights) ---------------------------------------------------
@pytest.mark.slow
def test_the_offline_text_encoder_is_a_real_sentence_encoder():
    from epalm.retrieval.towers import TextTower
    from epalm.zoo import resolve

    directory = resolve("all-minilm-l6-v2")  # fetched and cached like any user's
    assert not list(directory.rglob("*.bin")) and not list(directory.rglob("*.pt"))
    tower = TextTower("all-minilm-l6-v2")
    assert tower.pooling == "mean"  # what its sentence-transformers pooling config says
    texts = ["a red circle on a white background", "a crimson round shape", "two dogs in the snow"]
    with torch.no_grad():
        embeddings = F.normalize(tower(**tower.tokenize(texts)), dim=-1)
    similar, unrelated = embeddings[0] @ embeddings[1], embeddings[0] @ embeddings[2]
    assert similar > 0.3 > 0.1 > unrelated


# --- the task: gallery, scores, shuffled pairs, zero-shot ----------------------------------------
def _caption_sample(i, media, captions):
    from epalm.data.manifest import Sample

    return Sample(id=f"s{i}", split="test", modality="image", media=[media], captions=captions)


def test_a_gallery_groups_captions_by_media_and_skips_questions():
    from epalm.data.manifest import Sample
    from epalm.tasks.retrieval import build_gallery

    samples = [
        _caption_sample(0, "a.png", ["a red circle"]),
        _caption_sample(1, "b.png", ["a blue square", "a square in blue"]),
        Sample(
            id="q",
            split="test",
            modality="image",
            media=["a.png"],
            question="what?",
            answers=["red"],
        ),
        _caption_sample(2, "a.png", ["a round red shape", "a red circle"]),
    ]
    gallery = build_gallery(samples)
    assert [s.media for s in gallery.items] == [["a.png"], ["b.png"]]
    assert gallery.item_captions == [
        ["a red circle", "a round red shape"],
        ["a blue square", "a square in blue"],
    ]
    assert len(gallery.captions) == 4


def test_perfect_embeddings_score_100_and_shuffled_pairs_near_chance():
    from epalm.tasks.retrieval import build_gallery, retrieval_scores, shuffled_scores

    items = 200
    gallery = build_gallery(
        [_caption_sample(i, f"{i}.png", [f"caption {i}"]) for i in range(items)]
    )
    media = F.normalize(torch.randn(items, 32), dim=-1)
    text = media.clone()  # each caption's embedding is its item's
    assert retrieval_scores(media, text, gallery)["mean_recall"] == pytest.approx(100.0)
    shuffled = shuffled_scores(media, text, gallery)
    assert shuffled["text_to_media_r@10"] < 15  # chance: 10 / 200 = 5%
    assert shuffled["mean_recall"] < 10


def test_zero_shot_picks_the_closest_prompt():
    from epalm.tasks.retrieval import zero_shot_accuracy

    classes = ["circle", "square", "triangle"]
    class_text = torch.eye(3)
    media = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.7, 0.6, 0.0], [0.1, 0.0, 0.3]])
    labels = ["circle", "triangle", "square", "triangle"]
    result = zero_shot_accuracy(media, labels, classes, class_text)
    assert result["accuracy"] == pytest.approx(75.0)  # the third is closer to "circle"
    assert result["majority"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match=r"\['star'\]"):
        zero_shot_accuracy(media, [*labels[:3], "star"], classes, class_text)
