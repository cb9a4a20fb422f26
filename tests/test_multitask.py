"""One model for several jobs (VL-Adapter's unified setting): the task mix and its sampler, the
jobs composed from experiment=embedded-multitask, task prompts and task choice in the model,
and a whole tiny multi-task run through train, eval and predict."""

import json

import pytest
import torch
from conftest import media_batch

from epalm import EPALM
from epalm.cli import main
from epalm.config import AdapterConfig, TaskConfig
from epalm.testing import tiny_config, tiny_tokenizer
from epalm.training.compose import settings
from epalm.training.data import StepSampler, TaskSampler, task_mix, task_weights
from epalm.training.evaluate import selection_score
from epalm.training.settings import MultitaskSettings, SettingsError

pytestmark = pytest.mark.core


# --- the mix ------------------------------------------------------------------------------------
def test_task_weights_are_proportional_then_flatter_with_temperature():
    assert task_weights([300, 100]) == pytest.approx([0.75, 0.25])
    # p ~ n ** (1/2): sqrt(400) = 20, sqrt(100) = 10
    assert task_weights([400, 100], temperature=2) == pytest.approx([2 / 3, 1 / 3])
    assert task_weights([10_000, 1], temperature=1e9) == pytest.approx([0.5, 0.5])


def test_explicit_weights_win_over_the_temperature():
    flat = MultitaskSettings(tasks={"a": [], "b": []}, temperature=1e9)
    assert task_mix(["a", "b"], [300, 100], flat) == pytest.approx([0.5, 0.5])
    weighted = MultitaskSettings(tasks=flat.tasks, temperature=1e9, weights={"b": 3, "a": 1})
    assert task_mix(["a", "b"], [300, 100], weighted) == pytest.approx([0.25, 0.75])


def test_weights_from_the_command_line_must_name_every_task_with_a_positive_number():
    steps = "image-vqa:320,image-caption:200,video-vqa:300,video-caption:200,audio-caption:200"
    run, _ = settings(
        ["experiment=embedded-multitask", f"multitask.weights={{{steps},audio-vqa:500}}"]
    )
    assert run.multitask.weights["audio-vqa"] == 500 and len(run.multitask.weights) == 6
    with pytest.raises(SettingsError, match=r"names \['audio-vqa'\]; name every task"):
        settings(["experiment=embedded-multitask", "multitask.weights={audio-vqa:2}"])
    with pytest.raises(SettingsError, match=r"positive numbers, got \{'audio-vqa': 0\}"):
        settings(["experiment=embedded-multitask", f"multitask.weights={{{steps},audio-vqa:0}}"])
    with pytest.raises(SettingsError, match=r"multitask\.weights names"):  # no tasks to weigh
        settings(["multitask.weights={image-vqa:1}"])


def test_one_task_samples_exactly_as_the_single_task_sampler():
    options = dict(batch_size=8, steps=12, seed=3, grad_accum=2, rank=1, world_size=2)
    mixed = TaskSampler([37], [1.0], **options, start_step=5)
    alone = StepSampler(37, **options, start_step=5)
    assert [[(i, p) for _, i, p in part] for part in mixed] == list(alone)
    assert len(mixed) == len(alone)


def test_every_step_is_one_task_on_every_rank_and_resumes_where_it_stopped():
    sizes, weights = [50, 10, 20], task_weights([50, 10, 20], temperature=2)
    options = dict(batch_size=4, steps=400, seed=0, grad_accum=2, world_size=2)
    ranks = [list(TaskSampler(sizes, weights, **options, rank=r)) for r in (0, 1)]
    # the tasks of a step: of both its micro-batches on both ranks
    per_step = [
        {t for rank in ranks for part in rank[2 * s : 2 * s + 2] for t, _, _ in part}
        for s in range(400)
    ]
    assert all(len(tasks) == 1 for tasks in per_step)  # homogeneous, and the ranks agree
    order = [tasks.pop() for tasks in per_step]
    assert [order.count(t) / 400 for t in range(3)] == pytest.approx(weights, abs=0.06)
    resumed = list(TaskSampler(sizes, weights, **options, rank=0, start_step=123))
    assert resumed == ranks[0][2 * 123 :]
    # a task's steps walk its own permutation: its first two steps see 8 different samples
    first = [s for s in range(400) if order[s] == 0][:2]
    seen = [i for s in first for rank in ranks for part in rank[2 * s : 2 * s + 2]
            for _, i, _ in part]  # fmt: skip
    assert len(seen) == len(set(seen)) == 8


def test_the_best_checkpoint_is_picked_by_the_mean_in_reported_units():
    assert selection_score({"a": ("CIDEr", 0.5)}) == ("CIDEr", 0.5)
    metric, value = selection_score({"a": ("vqa_accuracy", 0.9), "b": ("CIDEr", 1.1)})
    assert metric == "mean over tasks" and value == pytest.approx((90 + 110) / 2)


# --- the jobs ------------------------------------------------------------------------------------
def test_embedded_multitask_composes_each_single_task_job():
    run, _ = settings(["experiment=embedded-multitask", "adapter=lora", "data.size=tiny"])
    assert list(run.jobs) == [
        "image-vqa", "image-caption", "video-vqa", "video-caption", "audio-vqa", "audio-caption"
    ]  # fmt: skip
    jobs = run.jobs
    assert jobs["audio-vqa"].data.name == "sound-scenes" and jobs["video-vqa"].modality == "video"
    assert all(j.data.size == "tiny" for j in jobs.values())  # the run's overrides reach its jobs
    assert jobs["image-caption"].eval.generation.max_new_tokens == 20  # each its own decoding
    assert jobs["image-vqa"].eval.generation.max_new_tokens == 5
    assert jobs["image-vqa"].encoder.kwargs["image_size"] == 112  # from its own experiment
    assert jobs["video-caption"].task.prompt == "Video caption:"
    assert all(j.train == run.train and j.lm == run.lm for j in jobs.values())  # the run's
    config = run.model_config()
    assert list(config.perceivers) == ["image", "video", "audio"]
    assert config.adapter.tasks == list(jobs)
    assert config.tasks["audio-vqa"] == TaskConfig("audio", "vqa", jobs["audio-vqa"].task.prompt)


def test_a_modality_with_two_encoders_is_refused_naming_both_tasks():
    with pytest.raises(SettingsError, match=r"image-vqa and image-caption.*one encoder per"):
        settings([
            "experiment=embedded-multitask",
            "multitask.tasks.image-caption="
            "['modality=image','task=caption','encoder=tiny-image','connector.levels=4']",
        ])  # fmt: skip


def test_each_slot_gets_its_own_jobs_levels():
    run, _ = settings(["experiment=embedded-multitask"])
    assert run.model_config().connector.slot_levels == {"image": 6, "video": 6, "audio": 4}
    with pytest.raises(SettingsError, match=r"image-vqa and image-caption.*levels=6 and 3"):
        settings([
            "experiment=embedded-multitask",
            "multitask.tasks.image-caption=['modality=image','task=caption','connector.levels=3']",
        ])  # fmt: skip


def test_a_task_that_cannot_compose_names_the_task():
    with pytest.raises(SettingsError, match=r"multitask.tasks.audio-vqa:.*connector.levels=6"):
        settings(["experiment=embedded-multitask", "connector.levels=6"])


# --- the model -----------------------------------------------------------------------------------
def two_task_model(shared=True):
    config = tiny_config("llama", ["image", "audio"])
    config.tasks = {
        "image-vqa": TaskConfig("image", "vqa", "Image question: {question} Answer:"),
        "audio-caption": TaskConfig("audio", "caption", "Sound caption:"),
    }
    config.adapter = AdapterConfig(
        name="bottleneck", kwargs={"reduction_factor": 4}, shared=shared, tasks=list(config.tasks)
    )
    return EPALM(config, tokenizer=tiny_tokenizer())


def test_each_task_has_its_prompt_and_a_task_is_found_by_slot_and_kind():
    model = two_task_model()
    assert model.prompt_for("what?", "image-vqa") == "Image question: what? Answer:"
    with model.using_task("audio-caption"):
        assert model.prompt_for() == "Sound caption:"
        assert model.current_task == "audio-caption"
    assert model.current_task is None
    assert model.task_for("audio", "caption") == "audio-caption"
    with pytest.raises(ValueError, match="not trained for vqa on 'audio'"):
        model.task_for("audio", "vqa")
    with pytest.raises(KeyError, match="video-vqa"), model.using_task("video-vqa"):
        pass


def test_a_step_on_one_task_trains_only_that_tasks_adapters_and_slot():
    model = two_task_model(shared=False)
    with torch.no_grad():  # away from the identity start, so that both sets get gradients
        for p in model.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    texts = model.encode_targets(["a beep"], task="audio-caption")
    with model.using_task("audio-caption"):
        loss, _ = model.target_loss(**texts, media=media_batch(model, ["audio"], size=1))
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert any(n.startswith("adapter.adapters.1.") for n in grads)  # audio-caption's set
    assert not any(n.startswith("adapter.adapters.0.") for n in grads)  # image-vqa's set
    assert any(n.startswith("connectors.audio.") for n in grads)
    assert not any(n.startswith("connectors.image.") for n in grads)


def test_caption_and_answer_run_as_the_task_for_their_slot(monkeypatch):
    model = two_task_model().eval()
    seen = []
    original = model.generate

    def spy(**kwargs):
        seen.append((model.current_task, model.tokenizer.decode(kwargs["input_ids"][0])))
        return original(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    from epalm.testing.perceivers import sample_media

    model.caption({"audio": sample_media("audio")}, max_new_tokens=2)
    model.answer({"image": sample_media("image")}, "what?", max_new_tokens=2)
    assert seen[0][0] == "audio-caption" and "Sound caption:" in seen[0][1]
    assert seen[1][0] == "image-vqa" and "Image question: what? Answer:" in seen[1][1]
    with pytest.raises(ValueError, match="not trained for caption on 'image'"):
        model.caption({"image": sample_media("image")})


def test_a_multitask_model_round_trips_with_its_tasks(tmp_path):
    model = two_task_model(shared=False)
    model.save_pretrained(tmp_path / "m")
    loaded = EPALM.from_pretrained(tmp_path / "m")
    assert loaded.config.tasks == model.config.tasks
    assert loaded.prompt_for(task="audio-caption") == "Sound caption:"


# --- a whole run ---------------------------------------------------------------------------------
def tiny_multitask(tmp_path, *extra, tasks=("image-vqa", "audio-vqa"), own=None):
    """A tiny run of experiment=embedded-multitask on ``tasks``, each with a tiny encoder."""
    from test_train_cli import TINY, multitask

    cache, run = f"model_cache={tmp_path / 'cache'}", f"run_dir={tmp_path / 'run'}"
    return [*multitask(*tasks, own=own), *TINY, cache, run, *extra]


def test_a_multitask_run_trains_evaluates_and_predicts_every_task(tmp_path, capsys):
    args = tiny_multitask(
        tmp_path, "train.max_steps=6", "train.eval_every=3", "adapter=bottleneck",
        "adapter.shared=false", tasks=("image-vqa", "audio-caption"),
        own={"audio-caption": ["connector.levels=3"]},  # a slot with levels of its own
    )  # fmt: skip
    assert main(["train", *args]) == 0
    run = tmp_path / "run"
    log = (run / "train.log").read_text()
    assert "tasks and their share of the steps" in log
    assert "name: caption" in (run / "tasks" / "audio-caption.yaml").read_text()
    assert "val image-vqa vqa_accuracy" in log and "val audio-caption CIDEr" in log
    assert "new best val mean over tasks" in log
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert set(summary["tasks"]) == {"image-vqa", "audio-caption"}
    assert {"seen", "blind"} <= set(summary["mean"])
    for name in summary["tasks"]:
        scores = json.loads((run / "eval" / name / "test" / "scores.json").read_text())
        assert {"seen", "blind"} <= set(scores)
    model = EPALM.from_pretrained(run / "final")
    assert list(model.config.tasks) == model.config.adapter.tasks == ["image-vqa", "audio-caption"]
    assert model.adapter.sets == 2
    assert {slot: c.levels for slot, c in model.connectors.items()} == {"image": 2, "audio": 3}

    capsys.readouterr()
    assert main(["eval", *args, "eval.blind=false"]) == 0
    out = capsys.readouterr().out
    assert "image-vqa: test VQA accuracy" in out and "audio-caption: test CIDEr" in out
    sound = sorted((tmp_path / "cache" / "datasets").rglob("*.wav"))[:1]
    assert main(["predict", *args, "modality=audio", f"predict.media=[{sound[0]}]"]) == 0
    assert capsys.readouterr().out.startswith(str(sound[0]))
    question = ["predict", *args, "modality=audio", f"predict.media=[{sound[0]}]", "predict.question=what?"]  # fmt: skip
    assert main(question) == 2
    assert "not trained for vqa on 'audio'" in capsys.readouterr().err

    # the demo serves it in each tab of a modality it perceives, as the task trained for it
    import gradio as gr

    from epalm.demo.app import ASK, DESCRIBE, GREEDY, respond
    from epalm.demo.models import load_models
    from epalm.demo.uploads import Limits

    served = load_models([run / "final"])
    (name,) = served
    assert served[name].task_on("audio") == "caption" and served[name].task_on("image") == "vqa"
    ask = [served, Limits(50, 60), "audio", name, str(sound[0])]
    text, who = respond(*ask, DESCRIBE, "", GREEDY, 1, 3)
    assert isinstance(text, str) and name in who
    with pytest.raises(gr.Error, match="not trained for vqa on 'audio'"):
        respond(*ask, ASK, "what?", GREEDY, 1, 3)
