"""`epalm train task=retrieval` end to end on tiny random towers: it trains, scores and
re-scores, resumes bit-identically after a kill, and two processes (gathered negatives) follow
the single-process loss curve."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_train_cli import history, kill_after_first_checkpoint, run_to_end, tiny

RETRIEVAL = ["text_encoder=tiny-text", "connector.levels=2", "train.lr=1e-2"]


def retrieval(tmp_path, *extra: str) -> list[str]:
    args = tiny(tmp_path, "image", "retrieval", *RETRIEVAL, *extra)
    return [a for a in args if not a.startswith("lm=")]  # no LM in a dual encoder


@pytest.mark.core
def test_a_retrieval_run_trains_keeps_only_trained_tensors_and_rescores(tmp_path):
    args = retrieval(tmp_path, "train.max_steps=8", "train.eval_every=4", "align=adapters")
    run_to_end(["train", *args])
    run = tmp_path / "run"
    curve = history(run)
    assert len(curve) == 8 and curve[-1] < curve[0]
    saved = set(load_file(run / "final" / "model.safetensors"))
    assert saved and all(
        k.startswith(("adapters.", "media_head.", "text_head.", "temperature."))
        or "norm" in k.lower()
        for k in saved
    ), sorted(saved)
    scores = json.loads((run / "eval" / "test" / "scores.json").read_text())
    assert {"seen", "shuffled", "items", "captions"} <= set(scores)
    assert 0 <= scores["seen"]["mean_recall"] <= 100
    run_to_end(["eval", *args])  # the saved model, scored again by `epalm eval`
    again = json.loads((run / "eval" / "test" / "scores.json").read_text())
    assert again["seen"] == scores["seen"] and again["shuffled"] == scores["shuffled"]

    # `epalm retrieve`: text -> media and media -> captions over the test gallery's index,
    # built by the first call beside the checkpoint and read by the next
    test = json.loads((run / "eval" / "test" / "scores.json").read_text())
    media = sorted((tmp_path / "cache" / "datasets").rglob("test-*.png"))[0]
    query = ['retrieve.text=["a small red circle"]', f"retrieve.media=[{media}]", "retrieve.k=2"]
    first = _hits(run_to_end(["retrieve", *args, *query]))
    assert (run / "final" / "index" / "scenes-test" / "media" / "index.json").is_file()
    assert [len(first[q]) for q in ("a small red circle", str(media))] == [2, 2]
    assert all(key.endswith(".png") for key, _ in first["a small red circle"])
    assert not any(key.endswith(".png") for key, _ in first[str(media)])  # captions
    assert len({key for key, _ in first[str(media)]}) == 2 <= test["captions"]
    assert _hits(run_to_end(["retrieve", *args, *query])) == first


def _hits(output: str) -> dict[str, list[tuple[str, float]]]:
    """``query\trank\tcosine\tkey`` lines -> {query: [(key, cosine), ...]} in rank order."""
    hits: dict[str, list[tuple[str, float]]] = {}
    for line in output.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[1].isdigit():
            hits.setdefault(parts[0], []).append((parts[3], float(parts[2])))
    return hits


@pytest.mark.core
def test_last_layers_trains_from_the_cached_input_of_the_top_block_as_from_media(tmp_path):
    """align=last-layers: the frozen bottom's output is cached once, and training from it follows
    the loss curve that training from media does."""
    curves = {}
    for features in ("auto", "media"):
        root = tmp_path / features
        args = retrieval(
            root, "align=last-layers", "train.max_steps=6", f"train.features={features}"
        )
        run_to_end(["train", *args])
        curves[features] = history(root / "run")
        cached = list((root / "cache" / "features").glob("*-block3-*/*/*.safetensors"))
        assert bool(cached) == (features == "auto")
    assert curves["auto"][-1] < curves["auto"][0]
    assert curves["auto"] == pytest.approx(curves["media"], rel=1e-4)


@pytest.mark.core
def test_predict_refuses_a_retrieval_model(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "epalm", "predict", *retrieval(tmp_path), "predict.media=[x.png]"],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "searches, not one that writes" in out.stderr


@pytest.mark.slow
def test_retrieval_resumes_bit_identical_after_sigkill(tmp_path):
    steps = ["train.max_steps=30", "train.save_every=4", "train.eval_every=100"]
    run_to_end(["train", *retrieval(tmp_path / "a", *steps)])
    killed = retrieval(tmp_path / "b", *steps)
    kill_after_first_checkpoint(killed, tmp_path / "b" / "run")
    run_to_end(["train", *killed])
    assert "resumed from" in (tmp_path / "b" / "run" / "train.log").read_text()
    a = load_file(tmp_path / "a" / "run" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "run" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_gather_negatives_and_follow_the_single_process_curve(tmp_path):
    """Each of two processes holds half of every batch; with negatives gathered from both, the
    loss curve is the single process's, step by step."""
    steps = ["train.max_steps=6", "train.eval_every=100", "eval.blind=false"]
    run_to_end(["train", *retrieval(tmp_path / "one", *steps)])
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--main_process_port", "29523", "-m", "epalm", "train"]
    two = subprocess.run(
        [*launch, *retrieval(tmp_path / "two", *steps)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one_curve, two_curve = history(tmp_path / "one" / "run"), history(tmp_path / "two" / "run")
    assert len(one_curve) == len(two_curve) == 6
    for a, b in zip(one_curve, two_curve):
        assert abs(a - b) < 1e-4 * abs(a)


@pytest.mark.core
def test_zero_shot_classification_where_the_data_have_labels(tmp_path):
    """easy-VQA's items carry attributes.shape: each test item is classified by the closest of
    the prompts "a photo of a {shape}", and the report names the label, classes and chance."""
    args = retrieval(tmp_path, "train.max_steps=2", "data=easy-vqa", "data.name=easy-vqa")
    run_to_end(["train", *args, "retrieval.zero_shot_label=attributes.shape"])
    scores = json.loads((tmp_path / "run" / "eval" / "test" / "scores.json").read_text())
    test = tmp_path / "cache" / "datasets" / "easy-vqa"
    manifest = next(test.rglob("test.jsonl")).read_text().splitlines()
    shapes = {json.loads(x)["attributes"]["shape"] for x in manifest if '"captions"' in x}
    zero = scores["zero_shot"]
    assert zero["label"] == "attributes.shape" and zero["classes"] == len(shapes)
    assert 0 <= zero["accuracy"] <= 100 and zero["majority"] >= 100 / len(shapes)
