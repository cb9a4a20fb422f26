"""``faithful=true``: each of eP-ALM's code's choices, built and checked without training."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from epalm import EPALM
from epalm.encoders.registry import build_perceiver
from epalm.testing import tiny_config, tiny_model, tiny_tokenizer
from epalm.testing.perceivers import tiny_perceiver_kwargs
from epalm.training.compose import settings
from epalm.training.optim import Schedule, build_optimization
from epalm.training.settings import TrainSettings
from tests.conftest import assert_cache_parity, media_batch

ROOT = "+data.root=/nonexistent"  # settings only: nothing is read


# --- the switch --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "recipe"),
    [
        (["experiment=vqav2", ROOT], "ep-alm-vqa"),
        (["experiment=coco", ROOT], "ep-alm-caption"),
        (["experiment=msrvtt-qa", ROOT], "ep-alm-vqa"),
        (["experiment=audiocaps", ROOT], "ep-alm-caption"),
        (["modality=image", "task=vqa"], "ep-alm-vqa"),
    ],
)
def test_faithful_sets_each_difference(overrides, recipe):
    default, _ = settings(overrides)
    run, _ = settings([*overrides, "faithful=true"])
    assert (default.train.optimizer, run.train.optimizer) == ("epalm", recipe)
    assert (default.train.frozen_dropout, run.train.frozen_dropout) == (False, True)
    assert run.connector.init_std == 1.0 != default.connector.init_std
    assert (default.injection.prefix_positions, run.injection.prefix_positions) == (
        "counted",
        "none",
    )
    video = run.modality == "video"
    assert run.encoder.kwargs.get("test_frames") == ("random" if video else None)
    assert default.encoder.kwargs.get("test_frames") is None
    # what the checkpoint records
    model = run.model_config()
    assert model.injection.prefix_positions == "none" and model.connector.init_std == 1.0


def test_each_difference_alone_without_the_switch():
    run, _ = settings(["train.optimizer=ep-alm-caption", "injection.prefix_positions=none"])
    assert run.train.optimizer == "ep-alm-caption" and not run.faithful
    assert run.injection.prefix_positions == "none" and not run.train.frozen_dropout


# --- optimiser groups and schedules ------------------------------------------------------------
def _recipe(name: str, **train):
    model = tiny_model(prompt_mlp=True)  # projections with biases, prompt MLP with biases
    train = TrainSettings(optimizer=name, lr=2e-4, prompt_lr=1e-3, min_lr=1e-5, epochs=3, **train)
    optimizer, scheduler = build_optimization(
        model, train, Schedule(total_steps=3000, steps_per_epoch=1000)
    )
    return model, optimizer, scheduler


def _lrs(optimizer, scheduler, steps):
    """Each group's lr at each of these step indices (the lr the step's update uses)."""
    seen, done = {}, 0
    for step in sorted(steps):
        for _ in range(step - done):
            optimizer.step()
            scheduler.step()
        done = step
        seen[step] = [g["lr"] for g in optimizer.param_groups]
    return seen


def _ids(params):
    return {id(p) for p in params}


def test_ep_alm_vqa_groups_decay_biases_and_keep_the_prompt_lr_fixed():
    model, optimizer, scheduler = _recipe("ep-alm-vqa")
    other, prompt = optimizer.param_groups
    assert _ids(prompt["params"]) == _ids(model.prompt.parameters())
    assert _ids(other["params"]) == _ids(model.connectors.parameters())
    # every parameter decayed, biases included (optim_factory.py:130)
    assert other["weight_decay"] == prompt["weight_decay"] == 0.02
    assert any(p.ndim == 1 for p in other["params"])
    lrs = _lrs(optimizer, scheduler, [0, 100, 101, 250, 400, 401, 999, 1000, 1999, 2000, 2999])
    # stairs from lr/2 every 100 steps of epoch 0, then the lr itself
    expected_first = {0: 1e-4, 100: 1e-4, 101: 1.25e-4, 250: 1.5e-4, 400: 1.75e-4, 401: 2e-4}
    for step, lr in expected_first.items():
        assert lrs[step][0] == pytest.approx(lr), step
    assert lrs[999][0] == pytest.approx(2e-4)
    for epoch in (1, 2):  # per epoch, the cosine of epoch / epochs
        cosine = 1e-5 + (2e-4 - 1e-5) * 0.5 * (1 + math.cos(math.pi * epoch / 3))
        assert lrs[1000 * epoch][0] == pytest.approx(cosine)
        assert lrs[1000 * epoch + 999][0] == pytest.approx(cosine)  # the whole epoch
    assert all(lr[1] == pytest.approx(1e-3) for lr in lrs.values())  # prompt_lr, never scheduled


def test_ep_alm_caption_ignores_prompt_lr_and_schedules_only_the_biases():
    model, optimizer, scheduler = _recipe("ep-alm-caption")
    flat, weights = optimizer.param_groups
    trainable = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    biases = {n for n, p in trainable.items() if p.ndim == 1}
    assert _ids(flat["params"]) == _ids(trainable[n] for n in biases)
    assert _ids(weights["params"]) == _ids(p for n, p in trainable.items() if n not in biases)
    assert _ids(model.prompt.embedding.parameters()) <= _ids(weights["params"])
    assert (flat["weight_decay"], weights["weight_decay"]) == (0.0, 0.02)
    lrs = _lrs(optimizer, scheduler, [0, 101, 401, 1500, 2500])
    assert [lrs[s][0] for s in (0, 101, 401)] == pytest.approx([1e-4, 1.25e-4, 2e-4])
    assert lrs[2500][0] < lrs[1500][0] < 2e-4
    # weights and prompt: the projections' lr, constant (prompt_lr=1e-3 is never read)
    assert all(lr[1] == pytest.approx(2e-4) for lr in lrs.values())


def test_default_recipe_is_unchanged():
    _, optimizer, scheduler = _recipe("epalm", warmup_ratio=0.1)
    names = [g["name"] for g in optimizer.param_groups]
    assert names == ["connectors.bias", "connectors", "prompt.bias", "prompt"]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.02, 0.0, 0.02]
    lrs = _lrs(optimizer, scheduler, [0, 299, 2999])
    assert lrs[0][3] == pytest.approx(1e-3 / 300)  # warmup from 0, prompt scheduled too
    assert lrs[299][1] == pytest.approx(2e-4)
    assert lrs[2999][3] == pytest.approx(1e-5, rel=1e-2)


def test_unknown_recipe_is_named():
    with pytest.raises(ValueError, match=r"train\.optimizer='adam' is not one of"):
        _recipe("adam")


# --- dropout in the frozen parts --------------------------------------------------------------
def _dropout_model(frozen_dropout: bool) -> EPALM:
    # tiny OPT has dropout 0.1; the tiny ViT gets some too
    config = tiny_config("opt")
    _, kwargs = tiny_perceiver_kwargs("image")
    kwargs["backbone_overrides"] = {"hidden_dropout_prob": 0.3}
    config.perceivers["image"] = dataclasses.replace(config.perceivers["image"], kwargs=kwargs)
    model = EPALM(config, tokenizer=tiny_tokenizer())
    model.frozen_dropout = frozen_dropout
    return model


def _loss(model, media):
    batch = model.encode_targets(["red"], ["what colour?"])
    return model(**batch, media=media).loss


@pytest.mark.parametrize("frozen_dropout", [False, True])
def test_frozen_parts_train_with_dropout_only_when_asked(frozen_dropout):
    model = _dropout_model(frozen_dropout)
    media = media_batch(model, ["image"], size=1)
    model.train()
    frozen = [model.lm, *model.perceivers.modules()]
    assert all(m.training == frozen_dropout for m in frozen)
    assert model.connectors.training
    assert not any(p.requires_grad for p in model.lm.parameters())
    assert not any(p.requires_grad for p in model.perceivers.parameters())
    assert model.perceivers["image"].stochastic_layers()  # dropout exists in both cases
    first, second = _loss(model, media), _loss(model, media)
    assert torch.equal(first, second) != frozen_dropout  # dropout really acts, or never
    model.eval()
    assert not any(m.training for m in frozen)
    assert torch.equal(_loss(model, media), _loss(model, media))


def test_backbone_override_that_does_nothing_is_refused():
    name, kwargs = tiny_perceiver_kwargs("image")
    with pytest.raises(ValueError, match="no setting 'drop_pth_rate'"):
        build_perceiver(name, **kwargs, backbone_overrides={"drop_pth_rate": 0.1})


# --- positions --------------------------------------------------------------------------------
def _positioned(lm: str, prefix_positions: str) -> EPALM:
    config = tiny_config(lm)
    config.injection = dataclasses.replace(config.injection, prefix_positions=prefix_positions)
    return EPALM(config, tokenizer=tiny_tokenizer()).eval()


def _seen_positions(model: EPALM, call):
    seen = []
    hook = model.lm.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw.get("position_ids")), with_kwargs=True, prepend=False
    )
    try:
        call()
    finally:
        hook.remove()
    return seen


@pytest.mark.core
@pytest.mark.parametrize("lm", ["llama", "opt"])
def test_text_starts_at_position_zero(lm):
    model = _positioned(lm, "none")
    media = media_batch(model, ["image"], size=1)
    batch = model.encode_targets(["red"], ["what?"])
    text = batch["input_ids"].shape[1]
    (positions,) = _seen_positions(model, lambda: model(**batch, media=media))
    prefix = model.injector.prefix_length
    assert positions[0, :prefix].tolist() == [0] * prefix
    assert positions[0, prefix:].tolist() == list(range(text))
    counted = _positioned(lm, "counted")
    counted.load_state_dict(model.state_dict())
    (positions,) = _seen_positions(counted, lambda: counted(**batch, media=media))
    assert positions[0].tolist() == list(range(prefix + text))
    assert not torch.allclose(
        model(**batch, media=media).logits, counted(**batch, media=media).logits
    )


def test_learned_positions_are_not_added_to_the_prefix():
    model = _positioned("opt", "none")
    table = model.lm.model.decoder.embed_positions
    rows = []
    hook = table.register_forward_hook(lambda m, a, out: rows.append(out), prepend=False)
    batch = model.encode_targets(["red"], ["what?"])
    model(**batch, media=media_batch(model, ["image"], size=1))
    hook.remove()
    prefix = model.injector.prefix_length
    assert torch.count_nonzero(rows[0][:, :prefix]) == 0
    assert torch.count_nonzero(rows[0][:, prefix:]) > 0


@pytest.mark.core  # leans on how HF's generate passes position ids
@pytest.mark.parametrize("lm", ["llama", "opt"])
def test_generation_matches_with_text_positions_from_zero(lm):
    model = _positioned(lm, "none")
    assert_cache_parity(model, num_beams=2, max_new_tokens=4, tolerance=1e-4)
    # a generation step continues the text's positions, not the prefix's
    prompts = model.tokenizer(["ab"], return_tensors="pt")
    media = media_batch(model, ["image"], size=1)
    seen = _seen_positions(
        model, lambda: model.generate(**prompts, media=media, max_new_tokens=2, min_new_tokens=2)
    )
    text = prompts["input_ids"].shape[1]
    assert seen[0][0, -1].item() == text - 1 and seen[1][0, -1].item() == text


def test_prefix_positions_are_checked():
    with pytest.raises(ValueError, match="prefix_positions='first' is not one of counted, none"):
        _positioned("llama", "first")


# --- video frames at test ----------------------------------------------------------------------
def test_random_test_frames_are_drawn_per_clip_and_the_same_every_time(tmp_path):
    from tests.test_media import write_clip

    name, kwargs = tiny_perceiver_kwargs("video")  # 4 frames: segments of 3 of the clip's 12
    middle = build_perceiver(name, **kwargs)
    drawn = build_perceiver(name, **kwargs, test_frames="random")
    assert drawn.config()["test_frames"] == "random" and middle.config()["test_frames"] == "middle"
    clips = [tmp_path / f"clip{i}.mp4" for i in range(4)]  # same frames, other paths
    for clip in clips:
        write_clip(clip, frames=12)
    fixed = middle.preprocess(str(clips[0]))["pixel_values"]
    draws = []
    for clip in clips:
        torch.manual_seed(1)
        first = drawn.preprocess(str(clip))["pixel_values"]
        torch.manual_seed(2)  # the global RNG does not matter: the clip's path seeds the draw
        assert torch.equal(first, drawn.preprocess(str(clip))["pixel_values"])
        draws.append(first)
    assert any(not torch.equal(d, fixed) for d in draws)
    assert any(not torch.equal(d, draws[0]) for d in draws[1:])
    assert torch.equal(middle.preprocess(str(clips[1]))["pixel_values"], fixed)
    with pytest.raises(ValueError, match="test_frames='rand' is not one of middle, random"):
        build_perceiver(name, **kwargs, test_frames="rand")
