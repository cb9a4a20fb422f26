"""Adapters inside the frozen LM (VL-Adapter): bottleneck, Compacter, Hyperformer, LoRA (peft),
trained norms and biases, shared and per-task sets, on every tiny architecture."""

import dataclasses

import pytest
import torch
from conftest import assert_cache_parity, media_batch

from epalm import EPALM, injection
from epalm.adapters import architectures as arch_map
from epalm.adapters import register_adapter, register_architecture
from epalm.config import AdapterConfig
from epalm.injection import Injector
from epalm.testing import TINY_LM_KINDS, tiny_config, tiny_tokenizer

pytestmark = pytest.mark.core

METHODS = ("bottleneck", "compacter", "hyperformer", "lora")
SMALL = {"bottleneck": {"reduction_factor": 4}, "compacter": {"reduction_factor": 4}}
SMALL["hyperformer"] = {"reduction_factor": 4, "embedding_dim": 8, "projector_hidden": 16}


def adapted_model(lm="llama", method="bottleneck", first_layer=1, seed=0, **adapter):
    """A tiny model with ``method`` in every layer (the LM and connector seeded alike)."""
    config = tiny_config(lm, ["image"])
    config.injection.first_layer = first_layer
    config.adapter = AdapterConfig(name=method, kwargs=SMALL.get(method, {}), **adapter)
    torch.manual_seed(seed)
    return EPALM(config, tokenizer=tiny_tokenizer())


def plain_twin(model):
    """The same model without adapters: the same LM, connector and prompt weights."""
    config = dataclasses.replace(model.config, adapter=AdapterConfig())
    twin = EPALM(config, tokenizer=model.tokenizer)
    state = {
        model.adapter.frozen_name(k) if model.adapter else k: v
        for k, v in model.state_dict().items()
    }
    twin.load_state_dict({k: v for k, v in state.items() if k in twin.state_dict()})
    return twin


def perturb(model, scale=0.3):
    """Move every trained tensor of the LM adapter away from its identity start."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and not name.startswith(("connectors.", "prompt.")):
                p.add_(torch.randn_like(p) * scale)


def batch(model):
    texts = model.encode_targets(["a red square", "two dots"], questions=[None, "what is it?"])
    return {**texts, "media": media_batch(model, ["image"])}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lm", TINY_LM_KINDS)
def test_each_method_starts_as_the_frozen_lm_and_then_acts(lm, method):
    model = adapted_model(lm, method).eval()
    inputs = batch(model)
    plain = plain_twin(model).eval()(**inputs).logits
    assert torch.equal(model(**inputs).logits, plain)
    perturb(model)
    assert not torch.allclose(model(**inputs).logits, plain, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_only_the_methods_parameters_train(method):
    model = adapted_model("opt", method, norms=True, biases=True).train()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter = {n for n in trained if not n.startswith(("connectors.", "prompt."))}
    assert adapter and all(
        n.startswith("adapter.") or "lora_" in n or "norm" in n or n.endswith(".bias")
        for n in adapter
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # the first step moves only the zero-initialised halves
        model(**batch(model)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, p in model.named_parameters():
        if name in trained:
            continue
        assert p.grad is None, name
        assert torch.equal(p, before[name]), name
    moved = {n for n in adapter if not torch.equal(model.get_parameter(n), before[n])}
    assert moved == adapter


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lm", TINY_LM_KINDS)
def test_cached_and_uncached_generation_agree_with_adapters(lm, method):
    model = adapted_model(lm, method).eval()
    perturb(model, scale=0.1)
    assert_cache_parity(model, num_beams=3, max_new_tokens=6, tolerance=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_save_and_load_round_trip_exactly(tmp_path, method):
    model = adapted_model("gpt2", method, norms=True).eval()
    perturb(model)
    model.save_pretrained(tmp_path)
    loaded = EPALM.from_pretrained(tmp_path, frozen_check="error").eval()
    inputs = batch(model)
    assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)
    saved, again = model.trainable_state_dict(), loaded.trainable_state_dict()
    assert saved.keys() == again.keys()
    assert all(torch.equal(saved[k], again[k]) for k in saved)
    assert EPALM.saved_config(tmp_path).adapter.name == method


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_the_lm_digest_is_the_plain_lms(method):
    """Adapters and peft's renamed projections leave the frozen LM's digest as the plain LM's,
    so a checkpoint is checked against the weights it was built on; trained norms are not in
    it."""
    model = adapted_model("llama", method)
    perturb(model)
    assert model.frozen_digests()["lm"] == plain_twin(model).frozen_digests()["lm"]
    with_norms = adapted_model("llama", method, norms=True)
    digest = with_norms.frozen_digests()["lm"]
    perturb(with_norms)  # trained norms are not frozen weights: left out of the digest
    assert with_norms.frozen_digests()["lm"] == digest


@pytest.mark.parametrize("lm", ["opt", "gpt2", "qwen2", "llama"])
def test_the_placeholder_cut_changes_no_trained_gradient_with_adapters_everywhere(monkeypatch, lm):
    """Adapters in layers before the first injection, trained norms and biases: the injector's
    cut of the slots' gradient there must leave every trained gradient as it was."""
    extra = {"biases": True} if lm != "llama" else {}

    def trained_grads():
        model = adapted_model(lm, "bottleneck", first_layer=2, norms=True, **extra).train()
        perturb(model, 0.1)
        model(**batch(model)).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    calls = []
    original = Injector._detach_slots
    monkeypatch.setattr(Injector, "_detach_slots", lambda *a: calls.append(1) or original(*a))
    with_cut = trained_grads()
    assert len(calls) == 1  # layer 1; adapters act in layers 0 and 1 before it
    monkeypatch.setattr(Injector, "_detach_slots", lambda *a: None)
    without_cut = trained_grads()
    assert with_cut.keys() == without_cut.keys()
    for name, grad in with_cut.items():
        torch.testing.assert_close(grad, without_cut[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", METHODS)
def test_adapters_leave_the_placeholder_alone_before_the_first_injection(method):
    model = adapted_model("opt", method, first_layer=2).eval()
    perturb(model)
    plain = plain_twin(model).eval()
    seen = {}

    def record(name):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen.setdefault(name, []).append(hidden[:, 0].clone())

        return hook

    inputs = batch(model)
    for name, m in (("adapted", model), ("plain", plain)):
        layer = m.lm.model.decoder.layers[2]  # the first injection layer's input
        handle = layer.register_forward_pre_hook(record(name), with_kwargs=True)
        m(**inputs)
        handle.remove()
    torch.testing.assert_close(seen["adapted"][0], seen["plain"][0])


@pytest.mark.parametrize("method", METHODS)
def test_per_task_sets_switch_with_the_task_and_train_apart(method):
    model = adapted_model("llama", method, shared=False, tasks=["image-vqa", "image-caption"])
    perturb(model)
    inputs = batch(model)
    with model.using_task("image-vqa"):
        vqa = model(**inputs)
    with model.using_task("image-caption"):
        caption = model(**inputs).logits
    assert not torch.allclose(vqa.logits, caption, atol=1e-4)
    vqa.loss.backward()
    if method == "hyperformer":  # one generator; the tasks' own part is their embedding
        grad = model.adapter.task_embedding.weight.grad
        assert grad[0].any() and not grad[1].any()
    else:
        grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
        idle = {n for n, p in model.named_parameters() if p.requires_grad} - grads
        assert idle, "the caption task's own tensors got a gradient from a VQA batch"
        assert all("1" in n or "image-caption" in n for n in idle)
    with (
        pytest.raises(KeyError, match="no task 'audio-vqa'"),
        model.using_task("audio-vqa"),
    ):
        pass


@pytest.mark.parametrize("method", ["bottleneck", "lora"])
def test_a_shared_set_serves_every_task(method):
    model = adapted_model("llama", method, tasks=["image-vqa", "image-caption"])
    perturb(model)
    inputs = batch(model)
    with model.using_task("image-vqa"):
        vqa = model(**inputs).logits
    with model.using_task("image-caption"):
        assert torch.equal(model(**inputs).logits, vqa)


def test_adapters_cover_a_layer_range_only():
    model = adapted_model("llama", "bottleneck", layers=[2, 3])
    assert [layer for layer, _ in model.adapter.sites] == [2, 2, 3, 3]
    with pytest.raises(ValueError, match=r"adapter.layers=\[2, 9\]"):
        adapted_model("llama", "bottleneck", layers=[2, 9])


def test_bitfit_on_an_lm_without_biases_is_an_error():
    with pytest.raises(ValueError, match="has no bias parameters"):
        adapted_model("llama", "none", biases=True)


def test_an_architecture_registered_by_the_documented_call_gets_adapters(monkeypatch):
    """A decoder epalm does not know (OLMo): registered with one call, it gets adapters."""
    from transformers import AutoConfig, AutoModelForCausalLM

    monkeypatch.setattr(arch_map, "_PARTS", dict(arch_map._PARTS))
    monkeypatch.setattr(injection, "_DECODER_LAYERS", dict(injection._DECODER_LAYERS))
    config = AutoConfig.for_model(
        "olmo", vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    lm = AutoModelForCausalLM.from_config(config)
    epalm_config = tiny_config("llama", ["image"])
    epalm_config.adapter = AdapterConfig(name="bottleneck", kwargs={"reduction_factor": 4})
    with pytest.raises(ValueError, match=r"register_decoder_layers\("):
        EPALM(epalm_config, lm=lm, tokenizer=tiny_tokenizer())
    register_architecture(
        "olmo",
        attention_output="self_attn.o_proj",
        feed_forward_output="mlp",
        query="self_attn.q_proj",
        value="self_attn.v_proj",
        layers="model.layers",
    )
    model = EPALM(epalm_config, lm=lm, tokenizer=tiny_tokenizer()).eval()
    inputs = batch(model)
    start = model(**inputs).logits
    perturb(model)
    assert not torch.allclose(model(**inputs).logits, start, atol=1e-4)


def test_a_registered_method_is_chosen_by_name(monkeypatch):
    from epalm.adapters import SublayerAdapters, base

    monkeypatch.setattr(base, "_ADAPTERS", dict(base._ADAPTERS))

    @register_adapter("scale")
    class Scale(SublayerAdapters):
        def __init__(self, context):
            super().__init__(context)
            self.gain = torch.nn.Parameter(torch.zeros(len(self.sites)))

        def delta(self, hidden, site):
            return hidden * self.gain[site]

    model = adapted_model("llama", "scale")
    assert isinstance(model.adapter, Scale)
    assert [n for n, p in model.named_parameters() if p.requires_grad and "gain" in n]


# the architectures epalm.injection knows beyond the tiny ones above, each built tiny here
OTHER_ARCHITECTURES = ("gpt_neox", "mixtral", "qwen3", "gemma", "gemma2", "phi3", "smollm3")


@pytest.mark.parametrize("method", ["bottleneck", "lora"])
@pytest.mark.parametrize("model_type", OTHER_ARCHITECTURES)
def test_every_known_architecture_gets_adapters(model_type, method):
    from transformers import AutoConfig, AutoModelForCausalLM

    assert set(OTHER_ARCHITECTURES) | set(TINY_LM_KINDS) == set(injection.known_architectures())
    config = AutoConfig.for_model(
        model_type, vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, num_local_experts=2, num_experts_per_tok=1,
    )  # fmt: skip
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(config)
    epalm_config = tiny_config("llama", ["image"])
    epalm_config.adapter = AdapterConfig(name=method, kwargs=SMALL.get(method, {}))
    model = EPALM(epalm_config, lm=lm, tokenizer=tiny_tokenizer()).eval()
    inputs = batch(model)
    start = model(**inputs).logits
    perturb(model)
    assert not torch.allclose(model(**inputs).logits, start, atol=1e-4)
