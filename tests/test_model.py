"""The core: frozen perceivers + trainable connector + frozen decoder LM, on tiny random models."""

import pytest
import torch
from conftest import (
    assert_cache_parity,
    assert_text_never_sees_later_text,
    assert_training_touches_only_the_connector,
    media_batch,
)

from epalm.testing import TINY_LM_KINDS, tiny_model
from epalm.text import encode_prompts, encode_training

# the core: run on the lowest releases the declared ranges allow too
pytestmark = pytest.mark.core

MODALITIES = ("image", "video", "audio")
CORE_LMS = ("opt", "gpt2", "llama")


def training_batch(model, size=2):
    captions = ["a red square", "two blue dots moving left"][:size]
    return model.encode_targets(captions, questions=[None, "what is it?"][:size])


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("lm", CORE_LMS)
def test_training_lowers_loss_and_touches_only_the_connector(lm, modality):
    model = tiny_model(lm, [modality]).train()
    assert_training_touches_only_the_connector(
        model, training_batch(model), media_batch(model, [modality])
    )
    assert not model.lm.training and not any(p.training for p in model.perceivers.values())


def test_frozen_parts_stay_in_eval_mode_so_dropout_never_fires():
    model = tiny_model("opt").train()  # the tiny OPT has dropout 0.1
    batch, media = training_batch(model), media_batch(model, ["image"])
    assert model.lm.config.dropout > 0 and model.connectors.training
    torch.testing.assert_close(
        model(**batch, media=media).logits, model(**batch, media=media).logits, rtol=0, atol=0
    )


@pytest.mark.parametrize("lm", TINY_LM_KINDS)
def test_logits_never_see_future_text(lm):
    model = tiny_model(lm, ["image"]).eval()
    assert_text_never_sees_later_text(model, media_batch(model, ["image"], size=1))


@pytest.mark.parametrize("lm", TINY_LM_KINDS)
def test_perception_reaches_the_text(lm):
    model = tiny_model(lm, ["image"]).eval()
    ids = encode_training(model.tokenizer, [""], ["a caption"])["input_ids"]
    media = media_batch(model, ["image"], size=2)
    with torch.no_grad():
        logits = model(ids.expand(2, -1), media=media).logits
        blind = model(ids, media=None).logits
    assert not torch.allclose(logits[0], logits[1], atol=1e-4)  # different images, different logits
    assert not torch.allclose(logits[:1], blind, atol=1e-4)
    assert torch.isfinite(blind).all()


@pytest.mark.parametrize(
    "slot_levels, schedule",
    [
        ({}, {1: (0, 0), 2: (0, 0), 3: (1, 1)}),
        # slots of different depths: each spreads its own levels over the same layers
        ({"audio": 3}, {1: (0, 0), 2: (0, 1), 3: (1, 2)}),
    ],
)
def test_each_injection_layer_receives_its_scheduled_level(slot_levels, schedule):
    model = tiny_model("llama", ["image", "audio"], slot_levels=slot_levels).eval()
    media = media_batch(model, ["image", "audio"], size=2)
    tokens = [s.tokens[:, :, 0] for s in model.perceive(media)]  # K = 1: [batch, levels, dim]
    seen = {}
    layers = model.lm.model.layers
    hooks = [
        layers[i].register_forward_pre_hook(
            lambda m, args, kw, i=i: seen.__setitem__(i, args[0][:, :2].clone()), with_kwargs=True
        )
        for i in range(len(layers))
    ]
    ids = torch.randint(3, 200, (2, 5))
    with torch.no_grad():
        model(ids, media=media)
    for hook in hooks:
        hook.remove()
    assert model.injector.schedule == schedule
    assert [t.shape[1] for t in tokens] == [2, slot_levels.get("audio", 2)]
    for layer, levels in schedule.items():
        for slot, (slot_tokens, level) in enumerate(zip(tokens, levels)):
            torch.testing.assert_close(seen[layer][:, slot], slot_tokens[:, level])
    assert not torch.allclose(seen[0][:, 0], tokens[0][:, 0])  # before injection: the placeholder


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize("lm", TINY_LM_KINDS)
def test_generation_with_and_without_cache_agree(lm, bos, num_beams):
    model = tiny_model(lm, ["image"], bos=bos).eval()
    assert_cache_parity(model, num_beams, max_new_tokens=8, tolerance=1e-4)


def test_left_padded_batch_generates_what_each_sample_does_alone():
    model = tiny_model("llama", ["image"]).eval()
    texts = ["Question: what colour is it? Answer:", "Hi"]
    media = media_batch(model, ["image"], size=2)
    together = model.generate(
        **encode_prompts(model.tokenizer, texts), media=media, max_new_tokens=6
    )
    for i, text in enumerate(texts):
        alone_media = {"image": {k: v[i : i + 1] for k, v in media["image"].items()}}
        alone = model.generate(
            **encode_prompts(model.tokenizer, [text]), media=alone_media, max_new_tokens=6
        )
        n = alone.shape[1]  # a sample that stopped early is padded in the batch
        assert torch.equal(together[i, :n], alone[0])
        assert (together[i, n:] == model.tokenizer.pad_token_id).all()


def test_beam_search_scores_match_a_teacher_forced_rescoring():
    """Beam search expands each sample's perception to its beams and reorders the cache."""
    model = tiny_model("gpt2", ["image"]).eval()
    prompts = encode_prompts(model.tokenizer, ["a", "bcd"])
    media = media_batch(model, ["image"], size=2)
    out = model.generate(
        **prompts,
        media=media,
        max_new_tokens=5,
        num_beams=3,
        num_return_sequences=3,
        length_penalty=0.0,
        return_dict_in_generate=True,
        output_scores=True,
    )
    assert out.sequences.shape[0] == 6
    eos = model.tokenizer.eos_token_id
    for row, (beam, score) in enumerate(zip(out.sequences, out.sequences_scores)):
        sample = row // 3
        ends = (beam == eos).nonzero()
        beam = beam[: ends[0, 0] + 1] if len(ends) else beam
        ids = torch.cat([prompts["input_ids"][sample], beam])[None]
        mask = torch.cat([prompts["attention_mask"][sample], torch.ones_like(beam)])[None]
        one = {"image": {k: v[sample : sample + 1] for k, v in media["image"].items()}}
        with torch.no_grad():
            logits = model(ids, attention_mask=mask, media=one).logits[0, -len(beam) - 1 : -1]
        rescored = logits.log_softmax(-1).gather(1, beam[:, None]).sum()
        torch.testing.assert_close(rescored, score, atol=1e-4, rtol=1e-4)


def test_caption_and_answer_take_raw_media():
    from epalm.testing.perceivers import sample_media

    model = tiny_model("llama", ["image"]).eval()
    caption = model.caption(sample_media("image", 0), max_new_tokens=4)
    answers = model.answer(
        [sample_media("image", 0), sample_media("image", 1)], "what is it?", max_new_tokens=4
    )
    assert isinstance(caption, str) and isinstance(answers, list) and len(answers) == 2


def test_save_and_load_give_identical_logits_and_hold_only_trained_tensors(tmp_path):
    from safetensors import safe_open

    from epalm import EPALM

    model = tiny_model("opt", ["image", "audio"], prompt_mlp=True).eval()
    for p in model.trainable_state_dict().values():
        p.add_(torch.randn_like(p) * 0.1)  # trained weights differ from a fresh init
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        saved = set(f.keys())
    assert saved == set(model.trainable_state_dict())
    assert all(k.startswith(("connectors.", "prompt.")) for k in saved)

    reloaded = EPALM.from_pretrained(tmp_path).eval()
    batch, media = training_batch(model), media_batch(model, ["image", "audio"])
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(**batch, media=media).logits,
            model(**batch, media=media).logits,
            rtol=0,
            atol=0,
        )


def test_a_checkpoint_notices_other_frozen_weights_than_it_was_trained_with(tmp_path, caplog):
    import json
    import logging

    from epalm import EPALM

    model = tiny_model()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["frozen_digests"] == model.frozen_digests()
    assert set(saved["frozen_digests"]) == {"lm", "perceivers.image"}
    with caplog.at_level(logging.WARNING):
        EPALM.from_pretrained(tmp_path)
    assert "differ from the weights" not in caplog.text  # the same weights: silent

    saved["lm"]["seed"] = 1  # the same name, other weights (as another conversion would be)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING):
        EPALM.from_pretrained(tmp_path)
    assert "the frozen lm rebuilt here differ from the weights" in caplog.text
    with pytest.raises(ValueError, match="the frozen lm rebuilt here differ"):
        EPALM.from_pretrained(tmp_path, frozen_check="error")


def test_loss_covers_the_target_only_unless_asked():
    model = tiny_model("llama")
    plain = model.encode_targets(["because"], questions=["why?"])
    prompt = model.prompt_for("why?")
    assert prompt == "Question: why? Answer:"
    prompt_len = len(model.tokenizer(prompt)["input_ids"])
    assert (plain["labels"][0, :prompt_len] == -100).all()
    target = plain["input_ids"][0, prompt_len:]
    assert (plain["labels"][0, prompt_len:] == target).all() and target[
        -1
    ] == model.tokenizer.eos_token_id
    assert model.tokenizer.decode(target, skip_special_tokens=True) == " because"

    model.config.text.loss_on_prompt = True  # eP-ALM's "question tokens too"
    with_prompt = model.encode_targets(["because"], questions=["why?"])
    assert (with_prompt["labels"] == with_prompt["input_ids"]).all()


def test_padding_is_never_a_target():
    model = tiny_model("llama")
    batch = model.encode_targets(["a", "a much longer caption"])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert (batch["attention_mask"][0] == 0).any()


def test_cutting_gradients_into_the_placeholder_changes_no_trained_gradient(monkeypatch):
    """Slots are detached before their first injection layer (against NaN on deep LMs); that
    must leave every trained gradient exactly as it was."""
    from epalm import EPALM
    from epalm.injection import Injector
    from epalm.testing import tiny_config, tiny_tokenizer

    def trained_grads():
        torch.manual_seed(0)
        config = tiny_config("llama", ["image"], prompt_tokens=3)
        config.injection.first_layer = 2  # layers 1 and 2 cut the slots' gradient
        model = EPALM(config, tokenizer=tiny_tokenizer()).train()
        model(**training_batch(model), media=media_batch(model, ["image"])).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    calls = []
    original = Injector._detach_slots
    monkeypatch.setattr(Injector, "_detach_slots", lambda *a: calls.append(1) or original(*a))
    with_cut = trained_grads()
    assert len(calls) == 1  # layer 1 only: layer 2 is the first injection layer
    monkeypatch.setattr(Injector, "_detach_slots", lambda *a: None)
    without_cut = trained_grads()
    for name, grad in with_cut.items():
        torch.testing.assert_close(grad, without_cut[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize("lm", TINY_LM_KINDS)
def test_target_loss_is_the_forward_loss_with_the_lm_head_at_targets_only(lm, bos):
    model = tiny_model(lm, bos=bos)
    batch = training_batch(model)
    media = media_batch(model, ["image"], 2)
    summed, count = model.target_loss(**batch, media=media)
    assert count == int((batch["labels"] != -100).sum())  # every target token, the first too
    assert count == model.target_count(batch["labels"])
    torch.testing.assert_close(summed / count, model(**batch, media=media).loss)

    summed.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)

    head = model.lm.get_output_embeddings()
    rows = []
    handle = head.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[-2]))
    model.target_loss(**batch, media=media)
    handle.remove()
    assert rows[-1] == count  # one row per target token, not per position


@pytest.mark.parametrize("prompt_tokens", [0, 3])
def test_the_first_caption_token_is_trained_without_bos_or_prompt(prompt_tokens):
    """A caption with no text prompt and no BOS: its first token is predicted from the prefix's
    last position (a slot or the soft prompt), and both losses count it."""
    model = tiny_model("llama", bos=False, prompt_tokens=prompt_tokens)
    batch = model.encode_targets(["a red square"])
    assert batch["labels"][0, 0] != -100  # nothing before the caption in the text
    media = media_batch(model, ["image"], 1)
    summed, count = model.target_loss(**batch, media=media)
    assert count == len("a red square") + 1  # byte tokens + eos
    torch.testing.assert_close(summed / count, model(**batch, media=media).loss)

    # the logit of the first token moves with the perception, so the connector learns to start it
    def first_token_logit(features):
        logits = model._run_lm(batch["input_ids"], None, None, {"image": features}).logits
        return logits[0, model.injector.prefix_length - 1, batch["input_ids"][0, 0]]

    with torch.no_grad():
        features = model.perceivers["image"](**media["image"])
        assert not torch.allclose(first_token_logit(features), first_token_logit(features * 3))
