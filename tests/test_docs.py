"""The documentation's code runs as written."""

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(path: Path) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S))


def test_adding_a_modality_example_runs(tmp_path, monkeypatch, capsys):
    from epalm.encoders import registry

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        registry, "_PERCEIVERS", dict(registry._PERCEIVERS)
    )  # keep "imu" out of other tests
    namespace: dict = {}
    exec(
        compile(python_blocks(DOCS / "adding-a-modality.md"), "adding-a-modality.md", "exec"),
        namespace,
    )
    assert type(namespace["reloaded"].perceivers["imu"]).__name__ == "IMUPerceiver"
    assert (tmp_path / "imu-checkpoint" / "model.safetensors").is_file()
    out = capsys.readouterr().out
    assert "trainable" in out and "loss" in out


def test_adding_a_connector_example_runs(monkeypatch, capsys):
    from epalm.connectors import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # keep "max-pool" to itself
    namespace: dict = {}
    exec(compile(python_blocks(DOCS / "connectors.md"), "connectors.md", "exec"), namespace)
    assert type(namespace["model"].connectors["image"]).__name__ == "MaxPool"
    assert "image: 1 token (max-pool, 1 level)" in capsys.readouterr().out
