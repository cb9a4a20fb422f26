"""The benchmark suite's quick mode runs end to end, its numbers are sane, and what it counts is
what it claims to count."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import SUITE
from benchmarks.common import Target, default_stack, features, paired_ratio, training_step
from benchmarks.injection import plain_inputs

ROOT = Path(__file__).resolve().parent.parent


def run_module(*arguments, timeout=600):
    result = subprocess.run(
        [sys.executable, "-m", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    stdout = run_module("benchmarks", "--quick", "--out", str(out), timeout=900)
    return stdout, {name: json.loads((out / f"{name}.json").read_text()) for name in SUITE}


@pytest.mark.slow
def test_quick_suite_writes_every_report(quick_suite):
    stdout, reports = quick_suite
    for name, report in reports.items():
        assert report["settings"]["quick"] is True
        assert report["tables"] and all(t["rows"] for t in report["tables"]), name
        assert report["targets"] == []  # tiny models: nothing to judge
        assert f"benchmarks.{name}" in report["command"]
    assert stdout.count("| ") > 20  # markdown tables on the console


@pytest.mark.slow
def test_quick_throughput_compares_the_same_training(quick_suite):
    results = quick_suite[1]["throughput"]["results"]
    assert sorted(results) == ["audio", "image", "video"]
    for row in results.values():
        assert row["epalm_way_samples_per_s"] > 0 and row["cache_samples_per_s"] > 0
        assert row["speedup"] == pytest.approx(
            row["cache_samples_per_s"] / row["epalm_way_samples_per_s"]
        )
        # same samples and weights: reading features from the cache changes no loss
        assert row["first_loss_media"] == pytest.approx(row["first_loss_cache"], abs=1e-4)


@pytest.mark.slow
def test_quick_numbers_are_sane(quick_suite):
    reports = quick_suite[1]
    util = reports["utilization"]["results"]
    assert util["matmul_peak_flops"] > 1e8
    for name, row in util.items():
        if name != "matmul_peak_flops":
            assert row["flops"] > 0 and 0 < row["utilisation"] < 2
    for row in reports["generation"]["results"].values():
        if isinstance(row, dict):
            assert row["cache_seconds"] > 0 and row["no_cache_seconds"] > 0
    memory = reports["memory"]["results"]
    assert 0.1 < memory["train_peak_gb"] < 8 and 0.1 < memory["serve_peak_gb"] < 8
    assert memory["answer"]  # the served checkpoint answered through HTTP
    frames = reports["scaling"]["results"]["frames"]
    assert all(r["media_seconds"] > 0 and r["cache_seconds"] > 0 for r in frames.values())


@pytest.mark.slow
def test_paper_stack_runs_in_bf16():
    """The GPU configuration (OPT + ViT, bf16 under autocast), shrunk, on the CPU."""
    stdout = run_module(
        "benchmarks.utilization", "--quick", "--stack", "paper", "--dtype", "bfloat16"
    )
    assert "OPT-2.7B + ViT-B/16" in stdout and "bfloat16 matmul peak" in stdout


def test_frozen_lm_computes_no_weight_gradients():
    """The FLOPs the utilisation benchmark divides by: with the LM frozen, a step costs well
    under the 3x-forward of full training; unfrozen, its weight gradients show up."""
    model = default_stack("image", quick=True)
    texts = model.encode_targets(["blue"] * 4, questions=["what color?"] * 4)
    inputs = {**texts, "features": {"image": features(model, "image", 4)}}

    def counted(step):
        with FlopCounterMode(display=False) as counter:
            step(inputs)
        return counter.get_total_flops()

    frozen = counted(training_step(model))
    model.lm.requires_grad_(True)
    unfrozen = counted(training_step(model))
    assert unfrozen > 1.4 * frozen


def test_injection_compares_equal_lengths():
    model = default_stack("image", quick=True)
    texts = model.encode_targets(["blue"] * 2, questions=["what color?"] * 2)
    plain = plain_inputs(model, texts)
    prefix = model.injector.prefix_length
    assert plain["input_ids"].shape[1] == texts["input_ids"].shape[1] + prefix
    assert (plain["labels"][:, :prefix] == -100).all()
    assert torch.equal(plain["input_ids"][:, prefix:], texts["input_ids"])


def test_targets_and_paired_ratios():
    assert Target("overhead", 4.0, 5, "%", at_most=True).met
    assert not Target("speed-up", 2.9, 3, "x").met
    # a slow round (noise) in both timings does not move the median of paired ratios
    assert paired_ratio([2.0, 2.2, 9.0], [1.0, 1.1, 4.5]) == pytest.approx(2.0)


def test_yes_no_probe_asks_each_value_once_as_yes():
    from benchmarks.probe_yes_no import questions

    asked = questions("teal", "circle")
    assert sorted(q for q, truth in asked if truth) == [
        "is there a circle?",
        "is there a teal shape?",
    ]
    assert len(asked) == 8 + 3 and len({q for q, _ in asked}) == len(asked)


def test_scenes_probe_reads_a_linear_fact_and_not_noise():
    from benchmarks.probe_scenes import probe

    torch.manual_seed(0)
    x = torch.randn(4000, 6)
    fact = (x[:, :2] > 0).float()
    assert probe(x[:3000], x[3000:], fact[:3000], fact[3000:], steps=300) > 0.97
    noise = torch.randint(0, 2, (4000, 2)).float()
    assert probe(x[:3000], x[3000:], noise[:3000], noise[3000:], steps=300) < 0.6


@pytest.mark.slow
def test_quick_adapters_compares_every_method_to_the_connector_alone(quick_suite):
    from benchmarks.adapters import METHODS

    results = quick_suite[1]["adapters"]["results"]
    assert list(results) == list(METHODS)
    for method, row in results.items():
        assert row["seconds"] > 0
        if method != "none":  # each method adds trainable tensors to the connector's
            assert row["trainable"] > results["none"]["trainable"]


@pytest.mark.slow
def test_quick_connector_cost_counts_the_tokens_each_connector_adds(quick_suite):
    from benchmarks.connector_cost import CONNECTORS

    results = quick_suite[1]["connector_cost"]["results"]
    assert list(results) == list(CONNECTORS)
    assert results["ep-alm"]["tokens"] == 1 and results["token-learner"]["tokens"] == 8
    # a tiny ViT gives 17 tokens (16 patches and [CLS]): all of them reach the LM
    assert results["all-tokens"]["tokens"] == 17
    flops = {name: row["lm_gflop"] for name, row in results.items()}
    assert flops["ep-alm"] < flops["token-learner"] < flops["all-tokens"]
    assert all(row["seconds"] > 0 and row["trainable"] > 0 for row in results.values())


def test_retrieval_table_checks_lilts_claims_against_full():
    from benchmarks.retrieval import claims, share

    def row(variant, trainable, score):
        return {"modality": "image", "variant": variant, "trainable": trainable, "score": score}

    rows = [
        row("heads", "197,121 of 44,966,913 (0.44%)", 50.0),
        row("adapters", "1,568,961 of 44,966,913 (3.39%)", 79.5),
        row("last-layers", "3,747,585 of 44,966,913 (8.33%)", 85.0),
        row("full", "44,966,913 of 44,966,913 (100.00%)", 80.0),
    ]
    assert share(rows[1]) == 3.39
    lines = claims(rows)
    assert "best at most 7% trained: adapters (3.39%) 79.5 against full 80.0" in lines[0]
    assert lines[0].endswith("(within 1 point of full: met)")
    assert lines[1].endswith("(75% of full: not met)")  # heads: 50 < 60


def test_seconds_per_step_are_read_from_the_trainers_own_line(tmp_path):
    from benchmarks.main_jobs import _seconds_per_step

    log = tmp_path / "train.log"
    log.write_text(
        "10:32:36 INFO task_data: features from media: the image encoder is trained or adapted\n"
        "10:48:23 INFO trainer: trained 200 steps in 930 s: 4.652 s/step (validation excluded)\n"
    )
    assert _seconds_per_step(log) == 4.652
    log.write_text("10:32:36 INFO task_data: the image encoder is trained or adapted\n")
    assert _seconds_per_step(log) is None
