"""`epalm train | eval | predict | cache` on tiny random models and the tiny embedded datasets:
composition and errors, a whole run, resume after SIGKILL, non-finite losses, and two real
processes under `accelerate launch`."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from epalm import EPALM
from epalm.cli import main
from epalm.training.compose import choices, compose, settings

TINY = [
    "lm=tiny-llama",
    "data.size=tiny",
    "connector.levels=2",
    "connector.prompt_tokens=2",
    "injection.first_layer=1",
    "injection.last_layer=3",
    "train.batch_size=4",
    "train.num_workers=0",
    "train.log_every=1",
    "eval.batch_size=8",
    "log_level=WARNING",
]


def tiny(tmp_path: Path, modality: str = "image", task: str = "vqa", *extra: str) -> list[str]:
    return [
        f"modality={modality}",
        f"task={task}",
        f"encoder=tiny-{modality}",
        *TINY,
        f"model_cache={tmp_path / 'cache'}",
        f"run_dir={tmp_path / 'run'}",
        *extra,
    ]


TASKS = ("image-vqa", "image-caption", "video-vqa", "video-caption", "audio-vqa", "audio-caption")


def multitask(*tasks: str, own: dict[str, list[str]] | None = None) -> list[str]:
    """experiment=embedded-multitask on ``tasks`` alone, each with its tiny encoder (and the
    overrides ``own`` gives it)."""
    args = ["experiment=embedded-multitask"]
    for name in TASKS:
        modality, task = name.split("-")
        job = [f"modality={modality}", f"task={task}", f"encoder=tiny-{modality}"]
        job += (own or {}).get(name, [])
        listed = f"[{','.join(repr(o) for o in job)}]"
        args.append(
            f"multitask.tasks.{name}={listed}" if name in tasks else f"~multitask.tasks.{name}"
        )
    return args


# per-task adapters: a step leaves the other task's adapters (and slot) without gradients
MULTITASK = [*multitask("image-vqa", "audio-vqa"), "adapter=bottleneck", "adapter.shared=false"]


def run_cli(args: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "epalm", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})},
        **kwargs,
    )


def run_to_end(args: list[str]) -> str:
    """Run the CLI in a process of its own to its end, and return its output. The output is read
    as it comes, so a full pipe never stalls the run; a failure shows it."""
    proc = run_cli(args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


def kill_after_first_checkpoint(args: list[str], run_dir: Path) -> None:
    """Start `epalm train args` and SIGKILL it once it has written a checkpoint (before it ends)."""
    proc = run_cli(["train", *args])
    checkpoints = run_dir / "checkpoints"
    deadline = time.time() + 300
    while not (checkpoints.is_dir() and any(checkpoints.glob("step-*"))):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "final").exists(), "the run ended before the kill"


def history(run_dir: Path) -> list[float]:
    last = sorted((run_dir / "checkpoints").iterdir())[-1]
    return [h["loss"] for h in json.loads((last / "trainer_state.json").read_text())["history"]]


# --- composition -------------------------------------------------------------------------------
def test_help_lists_every_group_and_its_choices(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for group, names in choices().items():
        assert group in out
        assert all(name in out for name in names)


@pytest.mark.parametrize("modality", ["image", "video", "audio"])
@pytest.mark.parametrize("task", ["vqa", "caption"])
def test_modality_and_task_pick_the_embedded_default(modality, task):
    resolved = compose([f"modality={modality}", f"task={task}"])
    expected = {"image": "easy-vqa", "video": "shapes-video", "audio": "sound-scenes"}
    assert resolved["data"]["name"] == expected[modality]
    assert resolved["encoder"]["modality"] == modality
    assert resolved["task"]["name"] == task
    assert resolved["run_dir"] == f"runs/{modality}-{task}"
    assert resolved["connector"]["prompt_tokens"] == 0  # the embedded recipe's speed choice
    run, _ = settings([f"modality={modality}", f"task={task}"])
    assert run.connector.levels <= run.encoder.num_levels  # the model would refuse to build


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.bogus=1", "train.bogus"),
        ("modality=smell", "smell"),
        ("train.mixed_precision=fp8", "train.mixed_precision='fp8' is not one of"),
        ("encoder=whisper-tiny.en", "audio encoder but modality=image"),
        ("train.batch_size=0", "train.batch_size must be at least 1"),
        ("connector.levels=13", "connector.levels=13 but the encoder has 12 levels"),
    ],
)
def test_bad_overrides_fail_with_one_clear_line(override, message, capsys):
    assert main(["train", override]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.core
# --- a whole run -------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_train_writes_a_model_that_eval_and_predict_load(tmp_path, modality, capsys):
    # captions on one modality only: their metrics start Java (METEOR, the PTB tokenizer)
    task = "caption" if modality == "image" else "vqa"
    args = tiny(tmp_path, modality, task, "train.max_steps=3", "train.eval_every=2")
    assert main(["train", *args]) == 0
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and "train:" in (run / "config.yaml").read_text()
    assert "step 3" in (run / "train.log").read_text()
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    scores = json.loads((run / "eval" / "test" / "scores.json").read_text())
    assert {"seen", "blind"} <= set(scores)
    # 3 steps of a random tiny LM: a run that cannot be a result, and says so where it ends
    key = "vqa_accuracy" if task == "vqa" else "CIDEr"
    seen, blind = (scores[m]["metrics"][key] for m in ("seen", "blind"))
    broken = scores["seen"]["generations"]["degenerate"] >= 0.25
    assert bool(scores["warnings"]) == (seen <= blind or broken)
    assert ("NOT A RESULT" in (run / "train.log").read_text()) == bool(scores["warnings"])
    model = EPALM.from_pretrained(run / "final")
    assert model.parameter_report().trainable > 0
    assert model.config.text.task == task  # recorded: the demo proposes it first

    capsys.readouterr()
    assert main(["eval", *args, "eval.blind=false"]) == 0
    assert "test" in capsys.readouterr().out

    media = sorted((tmp_path / "cache" / "datasets").rglob("*.png" if modality == "image" else
                                                           "*.mp4" if modality == "video" else
                                                           "*.wav"))[:2]  # fmt: skip
    listed = "[" + ",".join(str(m) for m in media) + "]"
    assert main(["predict", *args, f"predict.media={listed}", "predict.question=what?"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(m) for m in media]


@pytest.mark.core
@pytest.mark.parametrize("method", ["bottleneck", "lora"])
def test_an_adapter_run_loads_in_eval_predict_and_the_demo(tmp_path, method, capsys):
    from epalm.demo.models import load_models

    args = tiny(tmp_path, "image", "vqa", "train.max_steps=3", f"adapter={method}")
    args += ["adapter.kwargs.reduction_factor=4"] if method == "bottleneck" else []
    assert main(["train", *args, "train.adapter_lr=1e-3"]) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert "adapter" in log.split("parameters by part:")[1]
    model = EPALM.from_pretrained(tmp_path / "run" / "final", frozen_check="error")
    assert model.config.adapter.name == method
    assert model.config.adapter.tasks == ["image-vqa"]
    assert main(["eval", *args, "eval.blind=false"]) == 0
    image = sorted((tmp_path / "cache" / "datasets").rglob("*.png"))[0]
    assert main(["predict", *args, f"predict.media=[{image}]", "predict.question=what?"]) == 0
    served = load_models([tmp_path / "run" / "final"] * 2)
    first, second = (s.model for s in served.values())
    assert (first.lm is second.lm) == (method != "lora")  # LoRA changes its LM: not shared
    for s in served.values():
        assert isinstance(s.model.answer(str(image), "what shape?"), str)


def test_a_cpu_run_trains_in_bf16_when_asked_and_saves_fp32(tmp_path):
    """`train.mixed_precision=bf16` on a CPU: autocast in bf16, the trained tensors kept and
    saved in fp32, LoRA's B (zero at the start) trained. In its own process: accelerate keeps
    one precision per process, and earlier tests set fp32."""
    args = tiny(tmp_path, "image", "vqa", "train.max_steps=3", "adapter=lora")
    run_to_end(["train", *args, "train.mixed_precision=bf16", "eval.blind=false"])
    assert "precision bf16" in (tmp_path / "run" / "train.log").read_text()
    weights = _final_weights(tmp_path / "run")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)
    assert all(math.isfinite(loss) for loss in history(tmp_path / "run"))


def test_eval_without_a_trained_model_says_how_to_train_one(tmp_path, capsys):
    assert main(["eval", *tiny(tmp_path)]) == 2
    assert "epalm train modality=image task=vqa" in capsys.readouterr().err


def test_a_file_missing_inside_a_job_keeps_its_traceback(tmp_path, monkeypatch):
    """Only the errors epalm words for the user become one line; a stray FileNotFoundError is
    a bug or an environment problem, and its traceback is what finds it."""
    from epalm.training import jobs

    def broken(*args):
        (tmp_path / "never-written.bin").read_bytes()

    monkeypatch.setattr(jobs, "train", broken)
    with pytest.raises(FileNotFoundError, match=r"never-written\.bin"):
        main(["train", *tiny(tmp_path)])


def test_a_non_finite_loss_stops_the_run_naming_step_and_samples(tmp_path, capsys):
    args = tiny(tmp_path, "image", "vqa", "train.max_steps=6", "train.save_every=1")
    args += ["train.lr=1e30", "train.prompt_lr=1e30", "train.max_grad_norm=null"]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "the loss is" in err and "step " in err and "ids [" in err
    assert not (tmp_path / "run" / "final").exists()


# --- resume ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "adapter",
    [[], ["adapter=lora", "adapter.norms=true"], MULTITASK],
    ids=["", "lora", "multitask"],
)
def test_resume_after_sigkill_ends_bit_identical(tmp_path, adapter):
    steps = ["train.max_steps=40", "train.save_every=4", "train.eval_every=100", "eval.blind=false"]
    steps += adapter
    straight = tiny(tmp_path / "a", "image", "vqa", *steps)
    run_to_end(["train", *straight])

    killed = tiny(tmp_path / "b", "image", "vqa", *steps)
    kill_after_first_checkpoint(killed, tmp_path / "b" / "run")
    run_to_end(["train", *killed])
    log = (tmp_path / "b" / "run" / "train.log").read_text()
    assert "resumed from" in log, "the second run started over instead of resuming"

    a = load_file(tmp_path / "a" / "run" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "run" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert history(tmp_path / "a" / "run") == history(tmp_path / "b" / "run")


# --- the same seed, the same model ---------------------------------------------------------------
def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


def _assert_same_run(a: Path, b: Path) -> None:
    first, second = _final_weights(a), _final_weights(b)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert history(a) == history(b)


@pytest.mark.slow
def test_a_warm_cache_trains_the_model_a_cold_one_does(tmp_path):
    """The first run on a new machine (models converted, datasets built, features cached) and
    every later run with the same seed train bit-identical models. The real offline image
    encoder, whose conversion on a cold start builds a randomly initialised model first."""
    steps = ["train.max_steps=12", "train.eval_every=100", "eval.blind=false"]
    cold = [a for a in tiny(tmp_path, "image", "vqa", *steps) if not a.startswith("encoder=")]
    run_to_end(["train", *cold])
    warm = [a if not a.startswith("run_dir=") else f"run_dir={tmp_path / 'warm'}" for a in cold]
    run_to_end(["train", *warm])
    _assert_same_run(tmp_path / "run", tmp_path / "warm")


@pytest.mark.slow
def test_the_number_of_dataloader_workers_changes_nothing(tmp_path):
    steps = ["train.max_steps=6", "train.eval_every=100", "eval.blind=false"]
    steps += ["train.features=media", "train.augment=true"]  # workers decode and augment
    runs = {}
    for workers in (1, 2):
        args = tiny(tmp_path / str(workers), "image", "vqa", *steps)
        args = [a for a in args if not a.startswith("train.num_workers=")]
        run_to_end(["train", *args, f"train.num_workers={workers}"])
        runs[workers] = tmp_path / str(workers) / "run"
    _assert_same_run(runs[1], runs[2])


@pytest.mark.core
def _corrupt_one_ranks_micro_batch(args: list[str], steps: int, root: Path) -> int:
    """Copy the run's dataset to ``root`` (a user's manifests: the embedded cache would rebuild
    broken files) and break the media of rank 1's samples at the first step whose files rank 0
    does not use: rank 1's micro-batch is all bad there, rank 0's is fine."""
    import shutil

    from epalm.training.data import StepSampler, data_root, load_split, one_per_caption

    shutil.copytree(data_root(settings(args)[0]), root)
    s, _ = settings([*args, "data.embedded=false", f"+data.root={root}"])
    samples = one_per_caption(load_split(s, "train"))
    media = [[root / m for m in sample.media] for sample in samples]
    ranks = [
        list(
            StepSampler(len(samples), batch_size=4, steps=steps, seed=s.seed, rank=r, world_size=2)
        )
        for r in (0, 1)
    ]
    for step in range(1, steps):  # not the first step: the others must run before it
        files = [{f for i, _ in ranks[r][step] for f in media[i]} for r in (0, 1)]
        if not files[0] & files[1]:
            for path in files[1]:
                path.write_bytes(b"not an image")
            return step
    raise AssertionError("no step whose ranks share no file")


@pytest.mark.slow
def test_a_bad_micro_batch_on_one_process_keeps_the_processes_in_step(tmp_path):
    """Two processes over gloo, one micro-batch all bad on rank 1 only: both skip it (before,
    rank 1 skipped alone and rank 0 waited in DDP's all-reduce for ever)."""
    steps = ["train.max_steps=6", "train.eval_every=100", "eval.blind=false"]
    steps += ["train.features=media", "eval.max_samples=4"]  # media decoded at each step
    args = tiny(tmp_path, "image", "vqa", *steps)
    bad_step = _corrupt_one_ranks_micro_batch(args, 6, tmp_path / "mine")
    args += ["data.embedded=false", f"+data.root={tmp_path / 'mine'}"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--main_process_port", "29519", "-m", "epalm", "train"]
    run = subprocess.run(
        [*launch, *args, "log_level=INFO"],
        capture_output=True,
        text=True,
        timeout=300,  # a hang, as before the fix, ends here
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"step {bad_step}: micro-batch 0 skipped here too" in log, log  # rank 0 said why
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


# --- two processes -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "adapter", [[], ["adapter=bottleneck"], MULTITASK], ids=["", "bottleneck", "multitask"]
)
def test_two_processes_follow_the_single_process_loss_curve(tmp_path, adapter):
    steps = ["train.max_steps=8", "train.eval_every=100", "eval.blind=false", "train.lr=3e-3"]
    steps += adapter
    single = tiny(tmp_path / "one", "image", "vqa", *steps)
    run_to_end(["train", *single])
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--main_process_port", "29517", "-m", "epalm", "train"]
    two = subprocess.run(
        [*launch, *tiny(tmp_path / "two", "image", "vqa", *steps)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in (tmp_path / "two" / "run" / "train.log").read_text()
    one_curve, two_curve = history(tmp_path / "one" / "run"), history(tmp_path / "two" / "run")
    assert len(one_curve) == len(two_curve) == 8
    assert one_curve[-1] < one_curve[0]  # it trains
    for a, b in zip(one_curve, two_curve):
        assert abs(a - b) < 1e-4 * abs(a)


def _with_number_words(root: Path, split: str, count: int) -> list[str]:
    """Give ``count`` questions of a manifest ten identical number-word answers ("one", as a
    person writes them); their ids."""
    path = root / f"{split}.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    changed = []
    for line in lines:
        if "answers" in line and len(changed) < count:
            line["answers"] = ["one"] * 10
            changed.append(line["id"])
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return changed


@pytest.mark.parametrize(("vqa_eval", "unanswerable"), [("auto", 0), ("2017", 3)])
def test_a_manifest_dataset_is_scored_so_that_natural_answers_can_score(
    tmp_path, vqa_eval, unanswerable
):
    import shutil

    from epalm.training.data import data_root

    args = tiny(tmp_path, "image", "vqa", "train.max_steps=1", "eval.blind=false")
    root = tmp_path / "mine"
    shutil.copytree(data_root(settings(args)[0]), root)
    changed = _with_number_words(root, "test", 3)
    args += ["data.embedded=false", f"+data.root={root}", f"task.vqa_eval={vqa_eval}"]
    assert main(["train", *args]) == 0
    scores = json.loads((tmp_path / "run" / "eval" / "test" / "scores.json").read_text())
    assert scores["vqa_eval"] == ("2021" if vqa_eval == "auto" else "2017")  # a manifest: 2021
    assert scores["seen"]["vqa_eval"] == scores["vqa_eval"]
    assert scores["unanswerable"] == unanswerable
    assert scores["unanswerable_ids"] == changed[:unanswerable]


def _my_manifests(tmp_path: Path) -> tuple[list[str], Path]:
    """Tiny-run arguments over ``data=manifest`` and a copy of the tiny embedded manifests (a
    user's own directory)."""
    import shutil

    from epalm.training.data import data_root

    args = tiny(tmp_path, "image", "vqa", "train.max_steps=2", "eval.blind=false")
    root = tmp_path / "mine"
    shutil.copytree(data_root(settings(args)[0]), root)
    args = [a for a in args if a != "data.size=tiny"] + ["data=manifest", f"data.root={root}"]
    return args, root


def test_data_manifest_trains_evaluates_and_predicts(tmp_path, capsys):
    args, root = _my_manifests(tmp_path)
    assert main(["train", *args]) == 0
    scores = json.loads((tmp_path / "run" / "eval" / "test" / "scores.json").read_text())
    assert scores["splits"]["test"]["file"] == str(root / "test.jsonl")
    assert scores["splits"]["train"]["file"] == str(root / "train.jsonl")
    assert scores["splits"]["test"]["samples"] == scores["count"]
    # a split named on the command line is the one scored
    lines = (root / "test.jsonl").read_text().splitlines()
    questions = [line for line in lines if '"question"' in line][:3]
    (root / "holdout.jsonl").write_text("\n".join(questions) + "\n")
    assert main(["eval", *args, "data.splits.test=holdout.jsonl"]) == 0
    scores = json.loads((tmp_path / "run" / "eval" / "test" / "scores.json").read_text())
    assert scores["count"] == 3
    assert scores["splits"] == {"test": {"file": str(root / "holdout.jsonl"), "samples": 3}}
    image = root / json.loads(questions[0])["media"]
    capsys.readouterr()
    assert main(["predict", *args, f"predict.media=[{image}]", "predict.question=what?"]) == 0
    assert str(image) in capsys.readouterr().out


def test_a_preset_whose_test_is_its_val_says_so(tmp_path, caplog):
    from epalm.training.data import split_sources

    run, _ = settings(["data=vqav2", f"data.root={tmp_path}"])
    with caplog.at_level("WARNING"):
        sources = split_sources(run, {"val": 5, "test": 7})
    assert sources["test"]["file"] == sources["val"]["file"] == str(tmp_path / "val.jsonl")
    assert "the val and test splits all read" in caplog.text


def test_data_check_names_each_problem(tmp_path, capsys):
    _, root = _my_manifests(tmp_path)
    assert main(["data", "check", str(root)]) == 0
    report = capsys.readouterr().out
    assert "blind prior" in report and "OK" in report.splitlines()[-1]
    test = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()]
    missing = root / test[0]["media"]
    missing.unlink()
    with (root / "train.jsonl").open("a") as train:  # a test id again, in train: leakage
        train.write(json.dumps({**test[1], "split": "train"}) + "\n")
    bad_line = len((root / "val.jsonl").read_text().splitlines()) + 1
    with (root / "val.jsonl").open("a") as val:
        val.write('{"id": "broken", "split": "val"\n')
    assert main(["data", "check", str(root)]) == 1
    report = capsys.readouterr().out
    assert f"{missing}: no such file" in report
    assert f"{test[1]['id']} (test, train)" in report and "leakage" in report
    assert f"{root / 'val.jsonl'}:{bad_line}: not valid JSON" in report
    assert report.splitlines()[-1].endswith("NOT USABLE as it is")


def test_frozen_dropout_in_the_encoder_never_comes_from_the_cache(tmp_path, capsys):
    noisy = "+encoder.perceiver.kwargs.backbone_overrides={hidden_dropout_prob:0.1}"
    args = tiny(tmp_path, "image", "vqa", "train.max_steps=1", "eval.blind=false", noisy)
    assert main(["train", *args, "train.frozen_dropout=true", "train.features=cache"]) == 2
    assert "train.features=cache cannot apply the encoder's dropout" in capsys.readouterr().err
    assert main(["train", *args, "train.frozen_dropout=true", "log_level=INFO"]) == 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert "features from media: the encoder's dropout" in log
    assert "perception from media, every step" in log
