"""The injection refuses, loudly, every call whose layout it cannot be sure of: it never injects
into the wrong positions because transformers changed an argument name."""

import pytest
import torch
from conftest import media_batch
from transformers import DynamicCache, LlamaForCausalLM

import epalm.injection
from epalm import EPALM
from epalm.testing import tiny_config, tiny_model, tiny_tokenizer
from epalm.text import encode_prompts

# the core: run on the lowest releases the declared ranges allow too
pytestmark = pytest.mark.core


def _generate(model, **options):
    prompts = encode_prompts(model.tokenizer, ["Question: what? Answer:"])
    media = media_batch(model, ["image"], size=1)
    return model.generate(**prompts, media=media, max_new_tokens=4, **options)


def test_a_cache_it_cannot_find_is_an_error_not_a_rebuilt_prefix(monkeypatch):
    """What transformers 5.24's rename of past_key_values did: the cache went unseen."""
    model = tiny_model().eval()
    monkeypatch.setattr(epalm.injection, "_cached_length", lambda args, kwargs: None)
    with pytest.raises(RuntimeError, match="no KV cache epalm can find"):
        _generate(model, use_cache=True)
    assert _generate(model, use_cache=False).shape == (1, 4)  # no cache: every call is whole


def test_a_cache_filled_outside_the_injection_is_refused():
    model = tiny_model().eval()
    ids = encode_prompts(model.tokenizer, ["Hi"])["input_ids"]
    cache = DynamicCache()
    # the cache by position: its argument's name differs across transformers 5 releases
    model.lm(ids, None, None, cache, use_cache=True)  # cached without the prefix
    tokens = model.perceive(media=media_batch(model, ["image"], size=1))
    with model.injector.inject(tokens, None), pytest.raises(RuntimeError, match="filled outside"):
        model.lm(ids[:, -1:], None, None, cache, use_cache=True)


def test_a_call_shorter_than_the_prefix_is_refused():
    model = tiny_model(prompt_tokens=3).eval()
    tokens = model.perceive(media=media_batch(model, ["image"], size=1))
    guard = pytest.raises(RuntimeError, match="fewer than the 4-token prefix")
    with model.injector.inject(tokens, model._soft_prompt()), guard:
        model.lm(input_ids=torch.zeros(1, 2, dtype=torch.long))


def test_embeddings_passed_in_skip_the_prefix_and_are_refused():
    model = tiny_model().eval()
    tokens = model.perceive(media=media_batch(model, ["image"], size=1))
    embeds = torch.zeros(1, 8, model.lm.config.hidden_size)
    guard = pytest.raises(RuntimeError, match="before the LM's input embeddings")
    with model.injector.inject(tokens, model._soft_prompt()), guard:
        model.lm(inputs_embeds=embeds)


def test_a_layer_called_without_its_hidden_states_is_refused():
    model = tiny_model().eval()
    layers = epalm.injection.decoder_layers(model.lm)
    handle = layers[1].register_forward_pre_hook(
        lambda m, args, kwargs: ((args[0][:, :1], *args[1:]), kwargs),
        with_kwargs=True,
        prepend=True,
    )  # stands for an LM whose layers take something else first
    try:
        with pytest.raises(RuntimeError, match="cannot find the slots"):
            _generate(model)
    finally:
        handle.remove()


class _RenamedPositions(LlamaForCausalLM):
    def forward(self, input_ids=None, attention_mask=None, positions=None, labels=None,
                use_cache=None, **kwargs):  # fmt: skip
        return super().forward(input_ids, attention_mask, positions, labels=labels, **kwargs)


def test_an_lm_whose_arguments_were_renamed_is_refused_when_loaded():
    config = tiny_config()
    plain = tiny_model()
    lm = _RenamedPositions(plain.lm.config)
    with pytest.raises(TypeError, match="takes no position_ids"):
        EPALM(config, lm=lm, tokenizer=tiny_tokenizer())
