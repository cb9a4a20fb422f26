"""Connectors and K-token slots on tiny random models: causality, KV cache, masks, checkpoints."""

import numpy as np
import pytest
import torch
from conftest import (
    assert_cache_parity,
    assert_text_never_sees_later_text,
    assert_training_touches_only_the_connector,
    media_batch,
)

from epalm import EPALM
from epalm.connectors import build_connector, known_connectors
from epalm.testing import tiny_model
from epalm.text import encode_training

pytestmark = pytest.mark.core

K_CONNECTORS = {  # connector -> its settings with K > 1
    "all-tokens": {},
    "token-learner": {"num_tokens": 4},
    "resampler": {"num_tokens": 4, "width": 32, "heads": 2},
    "joint-fusion": {"num_tokens": 4, "first_tokens": 6, "text_tokens": 3, "width": 32, "heads": 2},
}
TEXT_FREE = [c for c in K_CONNECTORS if c != "joint-fusion"]


def k_model(connector, lm="llama", modalities=("image",), **overrides):
    settings = {"name": connector, "kwargs": K_CONNECTORS[connector], "levels": 1, **overrides}
    return tiny_model(lm, list(modalities), **settings).eval()


def test_every_connector_is_registered():
    assert set(K_CONNECTORS) | {"ep-alm"} <= set(known_connectors())
    with pytest.raises(KeyError, match="token-learner"):
        build_connector("token-lerner", encoder_dim=8, lm_dim=8)
    with pytest.raises(TypeError, match="resampler"):
        build_connector("resampler", encoder_dim=8, lm_dim=8, colour=1)


@pytest.mark.parametrize("connector", K_CONNECTORS)
@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_a_slot_holds_k_tokens_per_sample(connector, modality):
    model = k_model(connector, modalities=[modality])
    (slot,) = model.perceive(media_batch(model, [modality], size=2), text=_text(model, 2))
    expected = model.connectors[modality].num_tokens
    if expected is None:  # all-tokens: every token the perceiver gives
        expected = model.perceivers[modality].tokens(
            1, **media_batch(model, [modality], 1)[modality]
        )
        expected = expected["tokens"].shape[2]
    assert slot.tokens.shape == (2, 1, expected, model.lm.config.hidden_size)
    assert expected > 1 and slot.mask.shape == (2, expected)


def _text(model, size):
    ids = encode_training(model.tokenizer, ["what is it?"] * size, ["red"] * size)
    return model.prompt_text(ids["input_ids"], ids["attention_mask"], ids["labels"])


@pytest.mark.parametrize("connector", TEXT_FREE)
@pytest.mark.parametrize("lm", ["llama", "gpt2", "opt"])
def test_k_token_slots_never_let_text_see_later_text(connector, lm):
    model = k_model(connector, lm)
    assert_text_never_sees_later_text(model, media_batch(model, ["image"], size=1))


def test_joint_fusion_sees_the_prompt_but_no_target_sees_a_later_one():
    model = k_model("joint-fusion")
    media = media_batch(model, ["image"], size=1)
    first = encode_training(model.tokenizer, ["what colour?"], ["red and blue"])
    later = {k: v.clone() for k, v in first.items()}
    later["input_ids"][0, -4:-1] = later["labels"][0, -4:-1] = torch.tensor([70, 71, 72])
    other_prompt = encode_training(model.tokenizer, ["what shape?"], ["red and blue"])
    with torch.no_grad():
        a = model(**first, media=media).logits
        b = model(**later, media=media).logits
        c = model(**other_prompt, media=media).logits
    keep = first["input_ids"].shape[1] - 4
    torch.testing.assert_close(a[:, :keep], b[:, :keep], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, -3:], b[:, -3:])
    assert not torch.allclose(a[:, -5:], c[:, -5:], atol=1e-5)  # the question reaches the slot
    with pytest.raises(ValueError, match="loss_on_prompt"):
        from epalm.testing import tiny_config

        config = tiny_config(name="joint-fusion", kwargs=K_CONNECTORS["joint-fusion"], levels=1)
        config.text.loss_on_prompt = True
        EPALM(config, tokenizer=model.tokenizer)


@pytest.mark.parametrize("connector", K_CONNECTORS)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_cached_and_uncached_generation_agree_with_k_tokens(connector, num_beams):
    model = k_model(connector)
    assert_cache_parity(model, num_beams, max_new_tokens=6, tolerance=1e-4)


@pytest.mark.parametrize("connector", K_CONNECTORS)
def test_blind_runs_keep_the_nominal_slot_masked(connector):
    model = k_model(connector)
    ids = encode_training(model.tokenizer, [""], ["a caption"])["input_ids"]
    with torch.no_grad():
        seeing = model(ids, media=media_batch(model, ["image"], size=1)).logits
        blind = model(ids, media=None).logits
    assert torch.isfinite(blind).all() and not torch.allclose(seeing, blind, atol=1e-4)


def _padded_audio(model):
    """Two clips of different lengths in one batch: the shorter one's tokens are padded."""
    t = np.arange(16_000) / 16_000
    clips = [np.sin(2 * np.pi * 440 * t[:n]).astype(np.float32) for n in (16_000, 6_400)]
    return model.preprocess({"audio": clips})


@pytest.mark.parametrize("connector", TEXT_FREE)
def test_masks_keep_padded_perceptual_tokens_from_being_attended(connector):
    model = k_model(connector, modalities=["audio"])
    media = _padded_audio(model)
    features = {"audio": model.perceivers["audio"].tokens(1, **media["audio"])}
    mask = features["audio"]["mask"]
    assert mask[0].all() and not mask[1].all()  # the second clip is padded
    ids = torch.randint(3, 200, (2, 7))
    noisy = {"tokens": features["audio"]["tokens"].clone(), "mask": mask}
    noisy["tokens"][1][:, ~mask[1].bool()] = 100 * torch.randn_like(
        noisy["tokens"][1][:, ~mask[1].bool()]
    )
    with torch.no_grad():
        clean = model(ids, features=features).logits
        dirty = model(ids, features={"audio": noisy}).logits
        alone = {
            k: v[1:, :, : int(mask[1].sum())] if k == "tokens" else v[1:, : int(mask[1].sum())]
            for k, v in features["audio"].items()
        }
        by_itself = model(ids[1:], features={"audio": alone}).logits
    torch.testing.assert_close(clean, dirty, rtol=0, atol=1e-5)
    torch.testing.assert_close(clean[1:], by_itself, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("connector", K_CONNECTORS)
def test_each_connector_saves_and_reloads_exactly(tmp_path, connector):
    model = k_model(connector, modalities=("image", "audio"))
    with torch.no_grad():  # trained weights that differ from a fresh initialisation
        for p in model.connectors.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    loaded = EPALM.from_pretrained(tmp_path).eval()
    assert loaded.config.connector.name == connector
    saved = model.trainable_state_dict()
    assert set(saved) == set(loaded.trainable_state_dict())
    assert all(k.startswith(("connectors.", "prompt.")) for k in saved)
    for k, v in loaded.trainable_state_dict().items():
        assert torch.equal(v, saved[k]), k
    media = media_batch(model, ["image", "audio"], size=2)
    batch = encode_training(model.tokenizer, ["what is it?"] * 2, ["red", "a dog barks"])
    with torch.no_grad():
        torch.testing.assert_close(
            model(**batch, media=media).logits, loaded(**batch, media=media).logits, rtol=0, atol=0
        )


@pytest.mark.parametrize("connector", K_CONNECTORS)
def test_training_a_connector_lowers_the_loss_and_touches_only_it(connector):
    model = k_model(connector, modalities=["video"]).train()
    batch = encode_training(model.tokenizer, ["what is it?"] * 2, ["a red square", "blue dots"])
    assert_training_touches_only_the_connector(model, batch, media_batch(model, ["video"]))
    report = model.parameter_report()
    assert report.parts["connectors"][0] + report.parts["prompt"][0] == report.trainable > 0


def test_k_tokens_of_each_slot_take_their_own_span():
    model = k_model("token-learner", modalities=("image", "audio"), prompt_tokens=2)
    media = media_batch(model, ["image", "audio"], size=2)
    slots = model.perceive(media)
    assert model.prefix_length(slots) == 4 + 4 + 2
    seen = {}
    layer = model.lm.model.layers[1]  # the first injection layer
    hook = layer.register_forward_pre_hook(
        lambda m, args, kw: seen.__setitem__("h", args[0][:, :8].clone()), with_kwargs=True
    )
    with torch.no_grad():
        model(torch.randint(3, 200, (2, 5)), media=media)
    hook.remove()
    torch.testing.assert_close(seen["h"][:, :4], slots[0].tokens[:, 0])
    torch.testing.assert_close(seen["h"][:, 4:8], slots[1].tokens[:, 0])


@pytest.mark.parametrize("motion", [False, True])
def test_per_frame_token_learner_keeps_each_frame_in_its_own_tokens(motion):
    kwargs = {"num_tokens": 2, "per_frame": True, "motion": motion}
    model = k_model("token-learner", modalities=["video"], kwargs=kwargs)
    connector, frames = model.connectors["video"], model.perceivers["video"].token_frames
    # K per frame in frame order, then (motion) K for the later frames minus the earlier ones
    assert frames == 4 and connector.num_tokens == 2 * frames + 2 * motion
    tokens = model.perceivers["video"].tokens(1, **media_batch(model, ["video"], 1)["video"])
    changed = {**tokens, "tokens": tokens["tokens"].clone()}
    per_frame = tokens["tokens"].shape[2] // frames
    third = changed["tokens"][:, :, 2 * per_frame : 3 * per_frame]
    third += torch.randn_like(third)  # the third frame only
    with torch.no_grad():
        before, after = connector(tokens).tokens[0, 0], connector(changed).tokens[0, 0]
    moved = (before - after).abs().amax(-1) > 1e-6
    assert moved.tolist() == [False] * 4 + [True] * 2 + [False] * 2 + [True] * 2 * motion
    with pytest.raises(ValueError, match="4 frames"):
        connector({"tokens": tokens["tokens"][:, :, 1:], "mask": tokens["mask"][:, 1:]})
    with pytest.raises(ValueError, match="per_frame"):
        build_connector("token-learner", encoder_dim=8, lm_dim=8, motion=True)


def test_a_per_frame_connector_reloads_with_its_frames(tmp_path):
    model = k_model(
        "token-learner", modalities=["video"], kwargs={"num_tokens": 2, "per_frame": True}
    )
    model.save_pretrained(tmp_path)
    loaded = EPALM.from_pretrained(tmp_path).eval()
    assert loaded.connectors["video"].num_tokens == 8
    media = media_batch(model, ["video"], size=2)
    batch = encode_training(model.tokenizer, ["what moves?"] * 2, ["a dot", "a square"])
    with torch.no_grad():
        torch.testing.assert_close(
            model(**batch, media=media).logits, loaded(**batch, media=media).logits, rtol=0, atol=0
        )
