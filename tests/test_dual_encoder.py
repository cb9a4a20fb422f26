"""The dual encoder (LilT) on tiny random towers: each align variant trains what it says and
nothing else, checkpoints hold only trained tensors and reload exactly."""

import json
import re

import pytest
import torch

from epalm.encoders.blocks import encoder_blocks
from epalm.retrieval.align import align_variants
from epalm.retrieval.dual_encoder import DualEncoder
from epalm.retrieval.towers import pool_tokens
from epalm.testing import tiny_dual_encoder
from epalm.testing.perceivers import sample_media
from epalm.training.compose import settings
from epalm.training.optim import optimizer_for
from epalm.training.settings import TrainSettings

pytestmark = pytest.mark.core
CAPTIONS = ["a red circle", "a blue square", "two green triangles", "a small yellow star"]


def pairs(model, modality="image"):
    media = model.preprocess([sample_media(modality, seed=i) for i in range(4)], train=True)
    return media, model.text.tokenize(CAPTIONS)


def trained_names(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


HEADS = {
    "media_head.weight",
    "media_head.bias",
    "text_head.weight",
    "text_head.bias",
    "temperature.log_scale",
}


def expected_trained(variant: str, model) -> set[str]:
    """What each variant must unlock, written from LilT's description, not from the code."""
    everything = {n for n, _ in model.named_parameters()}
    media = {n for n in everything if n.startswith("perceiver.")}
    text = {n for n in everything if n.startswith("text.")}
    norms = {n for n in media | text if "norm" in n.lower()}
    return {
        "heads": HEADS,
        "lit": HEADS | text,
        "layernorm": HEADS | norms,
        "bitfit": HEADS | {n for n in media | text if n.endswith(".bias")},
        "adapters": HEADS | norms | {n for n in everything if n.startswith("adapters.")},
        # tiny ViT: 4 blocks (".layer.3." or ".layers.3.", by transformers' version) and a
        # final norm; tiny BERT: 2 blocks
        "last-layers": HEADS
        | {n for n in media if re.search(r"\.layers?\.3\.", n) or ".backbone.layernorm." in n}
        | {n for n in text if ".layer.1." in n},
        "full": everything,
    }[variant]


@pytest.mark.parametrize("variant", align_variants())
def test_each_variant_trains_exactly_its_parameters(variant):
    model = tiny_dual_encoder(align=variant)
    assert trained_names(model) == expected_trained(variant, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    media, text = pairs(model)
    losses = []
    for _ in range(5):
        loss = model(media, text)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trained_names(model)  # nothing frozen moved
    assert changed >= HEADS


def test_the_towers_own_weights_train_at_their_own_lr():
    model = tiny_dual_encoder(align="full")
    optimizer = optimizer_for(model, TrainSettings(lr=1e-3, tower_lr=1e-5))
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        tower = name.startswith(("perceiver.", "text."))
        assert lr_of[id(param)] == (1e-5 if tower else 1e-3), name
    # unset, they take the heads' (and adapters') lr
    optimizer = optimizer_for(model, TrainSettings(lr=1e-3))
    assert {g["lr"] for g in optimizer.param_groups} == {1e-3}


def test_the_variants_that_unlock_pretrained_weights_lower_their_lr():
    lrs = {}
    for variant in align_variants():
        run, _ = settings(["task=retrieval", f"align={variant}"])
        assert run.align.name == variant
        lrs[variant] = run.train.tower_lr
    assert lrs["full"] == lrs["lit"] == 1e-5 and lrs["last-layers"] == 1e-4
    assert all(lrs[v] is None for v in ("heads", "layernorm", "bitfit", "adapters"))


def test_the_parameter_report_gives_each_variant_its_share():
    shares = {v: tiny_dual_encoder(align=v).parameter_report().share for v in align_variants()}
    assert shares["heads"] < shares["layernorm"] < shares["adapters"] < shares["full"] == 1.0
    assert shares["heads"] < shares["bitfit"] < shares["lit"] < shares["full"]


def test_adapters_start_as_the_identity():
    plain, adapted = tiny_dual_encoder(align="heads"), tiny_dual_encoder(align="adapters")
    media, text = pairs(plain)
    with torch.no_grad():
        assert torch.equal(plain.embed_media(media), adapted.embed_media(media))
        assert torch.equal(plain.embed_text(**text), adapted.embed_text(**text))
    assert len(adapted.adapters) == 2 * (4 + 2)  # (attention, feed-forward) x blocks: 4 + 2


@pytest.mark.parametrize("variant", ["adapters", "last-layers"])
def test_a_checkpoint_holds_the_trained_tensors_only_and_reloads_exactly(tmp_path, variant):
    model = tiny_dual_encoder(align=variant)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))  # as if trained
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "model.safetensors")) == trained_names(model)
    reloaded = DualEncoder.from_pretrained(tmp_path, strict=True)
    media, text = pairs(model)
    with torch.no_grad():
        assert torch.equal(model.embed_media(media), reloaded.embed_media(media))
        assert torch.equal(model.embed_text(**text), reloaded.embed_text(**text))


def test_other_frozen_weights_are_refused_when_strict(tmp_path):
    model = tiny_dual_encoder(align="heads")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text"]["seed"] = 1  # another random text tower than the one it was trained with
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="tower weights rebuilt here differ"):
        DualEncoder.from_pretrained(tmp_path, strict=True)


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_every_modality_aligns(modality):
    model = tiny_dual_encoder(modality, align="adapters")
    media, text = pairs(model, modality)
    loss = model(media, text)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("adapters"))


def test_an_unknown_variant_names_the_known_ones():
    with pytest.raises(ValueError, match=r"align='lora'.*heads, lit"):
        tiny_dual_encoder(align="lora")


def test_last_layers_refuses_more_layers_than_a_tower_has():
    with pytest.raises(ValueError, match="layers=3 of 2 blocks"):
        tiny_dual_encoder(align="last-layers", align_kwargs={"layers": 3})


def test_pooling_reads_real_tokens_only():
    hidden = torch.arange(12.0).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool_tokens(hidden, mask, "mean").tolist() == [[1.0, 2.0], [8.0, 9.0]]
    assert pool_tokens(hidden, mask, "last").tolist() == [[2.0, 3.0], [10.0, 11.0]]
    assert pool_tokens(hidden, mask, "cls").tolist() == [[0.0, 1.0], [6.0, 7.0]]


def test_the_blocks_are_found_by_the_configs_depth():
    model = tiny_dual_encoder()
    assert len(encoder_blocks(model.text.model)) == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("modality", "perceiver", "blocks"),
    [
        ("image", ("image", {"model": "dinov2-small"}), 12),
        ("audio", ("whisper", {"model": "whisper-tiny.en"}), 4),
    ],
)
def test_adapters_fit_the_real_offline_towers(modality, perceiver, blocks):
    """DINOv2 / Whisper and all-MiniLM-L6-v2: every block of each real tower gets its two
    adapters, and a real sample goes through both."""
    from epalm.config import PerceiverConfig
    from epalm.retrieval.dual_encoder import DualEncoderConfig

    name, kwargs = perceiver
    model = DualEncoder(DualEncoderConfig(PerceiverConfig(name, kwargs), align="adapters"))
    assert len(model.adapters) == 2 * (blocks + 6)
    report = model.parameter_report()
    assert 0 < report.share < 0.07  # LilT's budget for its adapter recipe
    media = model.encode_media([sample_media(modality)])
    text = model.encode_text(["a red circle"])
    assert media.shape == text.shape == (1, 256)


def test_training_mode_leaves_the_towers_without_dropout():
    model = tiny_dual_encoder(align="full").train()
    _, text = pairs(model)
    assert not model.text.training and not model.perceiver.training
    assert torch.equal(model.embed_text(**text), model.embed_text(**text))


def test_a_decoder_lm_serves_as_the_text_tower_pooled_at_its_last_token():
    """Any HF model by config: here a tiny Llama, which `auto` pools at its last real token
    (a causal LM's only position that has read the whole text)."""
    from epalm.retrieval.towers import TextTower
    from epalm.testing import tiny_lm_config

    tower = TextTower(model_config=tiny_lm_config("llama", 260), tokenizer="epalm-bytes")
    assert tower.pooling == "last"
    batch = tower.tokenize(["a red circle", "a much longer caption of a blue square"])
    assert batch["attention_mask"][0, -1] == 0  # right-padded
    with torch.no_grad():
        pooled = tower(**batch)
        alone = tower(**tower.tokenize(["a red circle"]))
    torch.testing.assert_close(pooled[0], alone[0], atol=1e-5, rtol=1e-5)  # padding changes nothing
