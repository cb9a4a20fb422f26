"""Generation on the real SmolLM2-135M (the embedded default LM): with and without the KV
cache, greedy and beam search, the same tokens; run on both ends of the declared transformers
range in CI (`pytest -m core` on the lowest releases)."""

import pytest
import torch
from conftest import assert_cache_parity

from epalm import EPALM
from epalm.config import ConnectorConfig, EPALMConfig, LMConfig, PerceiverConfig
from epalm.testing.perceivers import tiny_perceiver_kwargs
from epalm.text import encode_prompts

pytestmark = [pytest.mark.slow, pytest.mark.core]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    name, kwargs = tiny_perceiver_kwargs("image")  # a random encoder: only the LM matters here
    config = EPALMConfig(
        lm=LMConfig(model="smollm2-135m-instruct"),
        perceivers={"image": PerceiverConfig(name, kwargs)},
        connector=ConnectorConfig(levels=2, prompt_tokens=2, seed=0),
    )
    return EPALM(config).eval()


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cached_and_uncached_generation_agree_on_smollm2(model, num_beams):
    assert_cache_parity(model, num_beams, max_new_tokens=12, tolerance=1e-3)


@pytest.mark.parametrize("use_cache", [True, False])
def test_blind_smollm2_still_completes_text(model, use_cache):
    """No perception (the slot masked): the frozen LM behind a random soft prompt of two tokens
    still knows what it knew, cached or not."""
    prompts = encode_prompts(model.tokenizer, ["The capital of France is"])
    new = model.generate(**prompts, max_new_tokens=6, use_cache=use_cache)
    assert "Paris" in model.tokenizer.decode(new[0])
