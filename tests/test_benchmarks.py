"""The benchmarks' quick modes run and report sane numbers."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_cache_throughput_quick_mode(tmp_path):
    out = tmp_path / "results.json"
    script = BENCHMARKS / "bench_cache_throughput.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    results = json.loads(out.read_text())["results"]
    assert sorted(results) == ["audio", "image", "video"]
    for row in results.values():
        assert row["ratio"] > 0 and row["media_samples_per_s"] > 0
        # the same samples and starting weights: the first step's loss is the same either way
        assert abs(row["first_loss_media"] - row["first_loss_cache"]) < 1e-4
    assert "| speed-up |" in result.stdout


def test_yes_no_probe_asks_each_value_once_as_yes():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from probe_yes_no import questions
    finally:
        sys.path.remove(str(BENCHMARKS))
    asked = questions("teal", "circle")
    assert sorted(q for q, truth in asked if truth) == [
        "is there a circle?",
        "is there a teal shape?",
    ]
    assert len(asked) == 8 + 3 and len({q for q, _ in asked}) == len(asked)
