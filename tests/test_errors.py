"""Bad configuration gets a clear error that says what is wrong and how to fix it."""

import pytest

from epalm import EPALM, EPALMConfig
from epalm.config import LMConfig
from epalm.testing import tiny_config, tiny_tokenizer


def build(config):
    return EPALM(config, tokenizer=tiny_tokenizer())


def test_unknown_perceiver_name_suggests_close_ones():
    config = tiny_config()
    config.perceivers["image"].name = "imagee"
    with pytest.raises(KeyError, match=r"unknown perceiver 'imagee'.*Did you mean 'image'"):
        build(config)


def test_unknown_lm_architecture_says_how_to_add_it():
    config = tiny_config()
    config.lm = LMConfig(
        model_config={
            "model_type": "bloom",
            "vocab_size": 260,
            "hidden_size": 32,
            "n_layer": 4,
            "n_head": 4,
        }
    )
    with pytest.raises(ValueError, match=r"register_decoder_layers\('bloom', 'model.layers'\)"):
        build(config)


@pytest.mark.parametrize(("first", "last"), [(2, 9), (-1, 2), (3, 1)])
def test_injection_layers_out_of_range(first, last):
    config = tiny_config()
    config.injection.first_layer, config.injection.last_layer = first, last
    with pytest.raises(ValueError, match=r"out of range for an LM with 4 layers"):
        build(config)


def test_more_levels_than_the_encoder_has():
    config = tiny_config(levels=5)
    with pytest.raises(
        ValueError, match=r"connector.levels=5 but perceiver 'image' .* has only 4 levels"
    ):
        build(config)
    with pytest.raises(ValueError, match=r"has only 4 levels; .* connector.slot_levels.image"):
        build(tiny_config(slot_levels={"image": 5}))


def test_levels_for_a_slot_the_model_does_not_have():
    with pytest.raises(ValueError, match=r"slot_levels names \['audio'\], .* \(image\)"):
        build(tiny_config(slot_levels={"audio": 2}))


def test_more_levels_than_injection_layers():
    config = tiny_config(levels=3)
    config.injection.first_layer = 2
    with pytest.raises(
        ValueError, match=r"3 encoder levels cannot be spread over 2 injection layers"
    ):
        build(config)


def test_unknown_config_keys_are_named():
    with pytest.raises(ValueError, match=r"connector: unknown keys \['level'\]"):
        EPALMConfig.from_dict({"connector": {"level": 3}})


def test_lm_without_a_tokenizer_name():
    with pytest.raises(ValueError, match="name a tokenizer"):
        EPALM(tiny_config())


def test_media_for_a_slot_the_model_lacks():
    model = build(tiny_config())
    with pytest.raises(KeyError, match=r"no perceiver for \['audio'\]"):
        model.preprocess({"audio": [None]})


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing"):
        EPALM.from_pretrained(tmp_path)


def test_gradient_checkpointing_of_the_frozen_lm_is_refused_not_silently_off():
    from epalm.testing import tiny_model

    model = tiny_model()
    # transformers' later 5.x releases call it activation checkpointing (the old name warns)
    kind = "activation" if hasattr(model.lm, "activation_checkpointing_enable") else "gradient"
    getattr(model.lm, f"{kind}_checkpointing_enable")()
    with pytest.raises(ValueError, match=rf"gradient checkpointing of the frozen LM.*{kind}_chec"):
        model.train()
    getattr(model.lm, f"{kind}_checkpointing_disable")()
    assert model.train().connectors.training


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_sharded_strategies_are_refused_before_anything_runs(kind):
    """A stand-in accelerator (only its distributed_type is read): FSDP and DeepSpeed need
    processes this check must refuse before they start anything."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from epalm.training.settings import SettingsError
    from epalm.training.trainer import Trainer

    accelerator = SimpleNamespace(distributed_type=getattr(DistributedType, kind))
    with pytest.raises(SettingsError, match="does not support yet"):
        Trainer(None, accelerator)
