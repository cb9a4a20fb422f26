"""eP-ALM's trainable parts, their sizes, and the injection schedule."""

import pytest
import torch

from epalm import LevelProjection, SoftPrompt
from epalm.injection import injection_schedule
from epalm.testing import tiny_model


def count(*modules):
    return sum(p.numel() for m in modules for p in m.parameters())


def test_paper_parameter_counts():
    # OPT-2.7B + ViT-B: 6 projections and the MLP prompt: about 25M (0.9%).
    base = count(LevelProjection(768, 2560, levels=6), SoftPrompt(10, 2560, mlp_hidden=2560))
    assert 24.5e6 < base < 25.5e6
    # OPT-6.7B + ViT-L "pt-L": one shared projection and a plain prompt: about 4.2M.
    small = count(LevelProjection(1024, 4096, levels=6, shared=True), SoftPrompt(10, 4096))
    assert 4.1e6 < small < 4.3e6


def test_projection_per_level_or_shared():
    features = torch.randn(3, 6, 16)
    separate, shared = LevelProjection(16, 8, 6), LevelProjection(16, 8, 6, shared=True)
    assert separate(features).shape == shared(features).shape == (3, 6, 8)
    assert len(separate.projections) == 6 and len(shared.projections) == 1
    torch.testing.assert_close(separate(features)[:, 2], separate.projections[2](features[:, 2]))
    with pytest.raises(ValueError, match="expected 6 levels"):
        separate(features[:, :4])


def test_soft_prompt_starts_small_and_random():
    plain, mlp = SoftPrompt(10, 32), SoftPrompt(10, 32, mlp_hidden=64)
    assert plain().shape == mlp().shape == (10, 32)
    assert 0.01 < plain().std() < 0.03  # N(0, 0.02), never zero
    assert isinstance(mlp.mlp[1], torch.nn.Tanh)


def test_default_schedule_is_epalms():
    schedule = injection_schedule(32, 6)
    assert list(schedule) == list(range(19, 31))
    assert list(schedule.values()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert injection_schedule(30, 6, 18, 29) == {18 + i: i // 2 for i in range(12)}


def test_parameter_report_counts_only_connector_and_prompt_as_trainable():
    model = tiny_model("llama", ["image", "audio"])
    report = model.parameter_report()
    assert report.trainable == count(model.connectors, model.prompt)
    assert report.total == count(model)
    assert report.parts["lm"][0] == 0 and report.parts["perceivers"][0] == 0
    assert "trainable" in str(report) and f"{report.trainable:,}" in str(report)
