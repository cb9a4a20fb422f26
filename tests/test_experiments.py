"""The eP-ALM experiment presets and every config group choice compose into valid settings.

Composition only: no model or dataset is built (the trainable-parameter counts use meta tensors).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from epalm.connectors import LevelProjection, SoftPrompt
from epalm.presets import CONFIG_DIR
from epalm.training.compose import choices, settings
from epalm.training.settings import RunSettings, SettingsError

# eP-ALM's published setups (configs/ and run_scripts/accelerate_training/ of mshukor/eP-ALM):
# name: (modality, task, data, LM, encoder model, shared projection, lr, prompt_lr, epochs,
#        global batch, frames, trainable parameters)
PT_L = ("facebook/opt-6.7b", "google/vit-large-patch16-224", True, 2e-4, 1e-3, 35)
VIDEO = ("facebook/opt-2.7b", "facebook/timesformer-base-finetuned-k600", False, 2e-5, 1e-5, 26)
AUDIO = ("facebook/opt-2.7b", "MIT/ast-finetuned-audioset-10-10-0.4593", False, 2e-5, 1e-5, 30)
PT_L_PARAMS = 1024 * 4096 + 4096 + 10 * 4096  # one shared Linear + 10 plain prompt tokens
BASE_PARAMS = 6 * (768 * 2560 + 2560) + 10 * 2560 + 2 * (2560 * 2560 + 2560)  # 6 Linear + MLP
EXPERIMENTS = {
    "vqav2": ("image", "vqa", "vqav2", *PT_L, 16, None, PT_L_PARAMS),
    "gqa": ("image", "vqa", "gqa", *PT_L, 64, None, PT_L_PARAMS),
    "coco": ("image", "caption", "coco", *PT_L, 16, None, PT_L_PARAMS),
    "msrvtt-qa": ("video", "vqa", "msrvtt-qa", *VIDEO, 32, 8, BASE_PARAMS),
    "msvd-qa": ("video", "vqa", "msvd-qa", *VIDEO, 32, 8, BASE_PARAMS),
    # eP-ALM captions from 16 frames; the `video` perceiver takes the checkpoint's 8
    "msrvtt-caption": ("video", "caption", "msrvtt", *VIDEO, 64, 8, BASE_PARAMS),
    "audiocaps": ("audio", "caption", "audiocaps", *AUDIO, 32, None, BASE_PARAMS),
}
# The frame count a `video` perceiver reads from its checkpoint's config (num_frames).
CHECKPOINT_FRAMES = {
    "facebook/timesformer-base-finetuned-k400": 8,
    "facebook/timesformer-base-finetuned-k600": 8,
}
ROOT = "data.root=/anywhere"


def compose(*overrides: str) -> tuple[RunSettings, dict[str, Any]]:
    return settings(list(overrides))


def frame_count(run: RunSettings) -> int | None:
    if run.modality != "video":
        return None
    kwargs = run.encoder.kwargs
    return kwargs.get("num_frames") or CHECKPOINT_FRAMES[kwargs["model"]]


def trainable_parameters(run: RunSettings) -> int:
    c = run.connector
    with torch.device("meta"):
        projection = LevelProjection(
            run.encoder.hidden_size, run.lm.hidden_size, c.levels, c.shared
        )
        hidden = (c.prompt_mlp_hidden or run.lm.hidden_size) if c.prompt_mlp else None
        prompt = (
            SoftPrompt(c.prompt_tokens, run.lm.hidden_size, hidden) if c.prompt_tokens else None
        )
    modules = [projection] if prompt is None else [projection, prompt]
    return sum(p.numel() for m in modules for p in m.parameters())


def test_every_experiment_preset_is_listed():
    assert set(EXPERIMENTS) <= set(choices()["experiment"])


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_reproduces_ep_alm(name):
    run, resolved = compose(f"experiment={name}", ROOT)
    modality, task, data, lm, encoder, shared, lr, prompt_lr, epochs, batch, frames, params = (
        EXPERIMENTS[name]
    )
    assert (run.modality, run.task.name, run.data.name) == (modality, task, data)
    assert run.encoder.kwargs["model"] == encoder and resolved["encoder"]["modality"] == modality
    assert (run.lm.model, run.lm.dtype) == (lm, "float16")  # eP-ALM keeps OPT in fp16
    c = run.connector  # pt-L: one shared projection, plain prompt; base: 6 and an MLP prompt
    assert (c.levels, c.shared, c.prompt_tokens, c.prompt_mlp) == (6, shared, 10, not shared)
    t = run.train
    assert (t.lr, t.prompt_lr, t.epochs, t.batch_size) == (lr, prompt_lr, epochs, batch)
    assert (t.weight_decay, t.min_lr) == (0.02, 1e-5 if shared else 1e-6)
    assert (t.mixed_precision, t.augment, t.max_steps) == ("fp16", True, None)
    assert t.warmup_ratio < 0.02  # eP-ALM warms up for 400 steps only
    assert frame_count(run) == frames
    assert (run.eval.generation.num_beams, run.eval.generation.max_new_tokens) == (3, 30)
    assert run.eval.split == "test" and run.eval.split in run.data.splits
    assert run.task.loss_on_prompt is (task == "vqa")  # eP-ALM's labels include the question
    assert not run.data.embedded and run.data.root == "/anywhere"
    assert run.run_dir == f"runs/{name}"
    assert trainable_parameters(run) == params


def test_audio_experiment_uses_ep_alm_specaugment():
    run, _ = compose("experiment=audiocaps", ROOT)
    assert (run.encoder.kwargs["freq_mask"], run.encoder.kwargs["time_mask"]) == (24, 96)


def test_trainable_parameters_match_the_paper():
    pt_l, _ = compose("experiment=vqav2", ROOT)
    base, _ = compose("experiment=msvd-qa", ROOT)
    assert round(trainable_parameters(pt_l) / 1e6, 1) == 4.2  # "~4M, 0.06%"
    assert round(trainable_parameters(base) / 1e6) == 25


def test_vqav2_tests_on_val2014():
    # test-dev answers are hidden: the converter writes train.jsonl and val.jsonl only
    run, _ = compose("experiment=vqav2", ROOT)
    assert run.data.splits == {"train": "train.jsonl", "val": "val.jsonl", "test": "val.jsonl"}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_without_data_root_names_it(name):
    with pytest.raises(SettingsError, match=r"data\.root"):
        compose(f"experiment={name}")


def test_command_line_overrides_win_over_an_experiment():
    run, _ = compose("experiment=msvd-qa", ROOT, "lm=opt-6.7b", "train.lr=1e-4")
    assert (run.lm.model, run.train.lr, run.modality) == ("facebook/opt-6.7b", 1e-4, "video")


def preset(group: str, name: str) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml"))


def contains(big: Any, small: Any) -> bool:
    """Whether ``small`` is ``big`` or, for mappings, a recursive sub-mapping of it."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(
            k in big and contains(big[k], v) for k, v in small.items()
        )
    return big == small


def group_overrides(group: str, name: str) -> list[str]:
    """Overrides that compose ``group=name`` with what that choice needs to be valid."""
    overrides = [f"{group}={name}"]
    if group == "encoder":  # an encoder needs its modality, and no more levels than it has
        encoder = preset("encoder", name)
        overrides.insert(0, f"modality={encoder['modality']}")
        overrides.append(f"connector.levels={min(6, encoder['perceiver']['num_levels'])}")
    if group == "experiment" and name.count("-") == 2:  # embedded-{modality}-{task}
        _, modality, task = name.split("-")
        overrides[:0] = [f"modality={modality}", f"task={task}"]
    if (group == "data" and not preset("data", name)["embedded"]) or (
        group == "experiment" and not name.startswith("embedded-")
    ):
        overrides.append(ROOT)  # manifests on disk (an embedded dataset has no data.root)
    return overrides


GROUP_CHOICES = [(group, name) for group, names in choices().items() for name in names]


@pytest.mark.parametrize(
    ("group", "name"), GROUP_CHOICES, ids=[f"{g}={n}" for g, n in GROUP_CHOICES]
)
def test_every_group_choice_composes(group, name):
    run, resolved = compose(*group_overrides(group, name))
    if group in ("modality", "experiment"):  # `_global_` packages: checked by what they set
        if group == "modality":
            assert run.modality == name
        return
    expected = preset(group, name)
    if group == "data":
        expected.pop("root", None)  # set on the command line
    assert contains(at_package(resolved, group, name), expected), f"{group}={name} was not applied"


def at_package(resolved: dict[str, Any], group: str, name: str) -> Any:
    """Where a group's choice lands: its ``# @package`` header's key, else the group's name."""
    header = (CONFIG_DIR / group / f"{name}.yaml").read_text().splitlines()[0]
    package = header.split("@package", 1)[1].strip() if "@package" in header else group
    if package == "_global_":
        return resolved
    for key in package.split("."):
        resolved = resolved[key]
    return resolved


def test_tiny_presets_compose_into_a_smoke_run():
    for modality in ("image", "video", "audio"):
        run, _ = compose(
            f"modality={modality}",
            "lm=tiny-llama",
            f"encoder=tiny-{modality}",
            "connector.levels=2",
            "train.max_steps=2",
        )
        assert run.lm.model_config["model_type"] == "llama" and run.encoder.num_levels == 4


@pytest.mark.parametrize(
    ("overrides", "version"),
    [
        (["experiment=vqav2", ROOT], "2017"),  # the code its published numbers used
        (["experiment=gqa", ROOT], "2017"),
        (["data=vqav2", ROOT], "2017"),
        (["experiment=msrvtt-qa", ROOT], "2021"),
        (["modality=image", "task=vqa"], "2021"),  # the embedded main job
        (["data.embedded=false", "+data.root=/anywhere"], "2021"),  # a user's manifests
        (["experiment=vqav2", ROOT, "task.vqa_eval=2021"], "2021"),  # said, it wins
    ],
)
def test_vqa_code_follows_the_dataset(overrides, version):
    run, _ = compose(*overrides)
    assert run.task.vqa_eval == version


@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_data_manifest_takes_any_modality(modality):
    run, _ = compose(f"modality={modality}", "data=manifest", "data.root=/mine")
    assert (run.data.name, run.data.root, run.modality) == ("manifest", "/mine", modality)
    assert run.data.splits == {"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl"}
