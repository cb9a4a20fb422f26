"""A user-defined modality: an IMU time series perceived by a tiny transformer, in a few lines."""

import numpy as np
import pytest
import torch
from torch import nn

from epalm import EPALM, EPALMConfig, Perceiver, register_perceiver
from epalm.config import ConnectorConfig, InjectionConfig, LMConfig, PerceiverConfig
from epalm.testing import tiny_lm_config, tiny_tokenizer


class IMUPerceiver(Perceiver):
    """Six-axis IMU readings [time, 6] -> a tiny transformer with a learned summary token."""

    modality = "imu"

    def __init__(self, width: int = 32, layers: int = 3, seed: int = 0):
        super().__init__()
        self.width, self.layers, self.seed = width, layers, seed
        torch.manual_seed(seed)
        self.embed = nn.Linear(6, width)
        self.cls = nn.Parameter(torch.randn(1, 1, width))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=64, batch_first=True)
            for _ in range(layers)
        )
        self.hidden_size, self.num_levels = width, layers

    def preprocess(self, media, *, train=False):
        return {"readings": torch.as_tensor(np.asarray(media), dtype=torch.float32)}

    def hidden_states(self, readings):
        x = torch.cat([self.cls.expand(len(readings), -1, -1), self.embed(readings)], dim=1)
        states = []
        for block in self.blocks:
            x = block(x)
            states.append(x)
        return states

    def config(self):
        return {"width": self.width, "layers": self.layers, "seed": self.seed}


register_perceiver("test-imu", IMUPerceiver)


def imu_config() -> EPALMConfig:
    return EPALMConfig(
        lm=LMConfig(model_config=tiny_lm_config("llama", 260)),
        perceivers={"imu": PerceiverConfig("test-imu", {"layers": 3})},
        connector=ConnectorConfig(levels=2, prompt_tokens=2),
        injection=InjectionConfig(first_layer=1, last_layer=2),
    )


def test_user_modality_trains_a_step_and_generates(tmp_path):
    model = EPALM(imu_config(), tokenizer=tiny_tokenizer())
    rng = np.random.default_rng(0)
    walk, still = rng.normal(size=(20, 6)), np.zeros((20, 6))
    batch = model.encode_targets(["walking", "standing still"])
    media = model.preprocess({"imu": [walk, still]})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss_before = model(**batch, media=media).loss
    loss_before.backward()
    optimizer.step()
    assert model(**batch, media=media).loss < loss_before

    captions = model.caption([walk, still], max_new_tokens=4)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)

    model.save_pretrained(tmp_path)
    reloaded = EPALM.from_pretrained(tmp_path)
    assert isinstance(reloaded.perceivers["imu"], IMUPerceiver)
    torch.testing.assert_close(
        reloaded(**batch, media=media).logits, model(**batch, media=media).logits
    )


def test_register_rejects_non_perceivers_and_name_clashes():
    with pytest.raises(TypeError, match="not a Perceiver subclass"):
        register_perceiver("test-not-a-perceiver", nn.Linear)

    class Other(IMUPerceiver):
        pass

    with pytest.raises(ValueError, match="already taken"):
        register_perceiver("test-imu", Other)
