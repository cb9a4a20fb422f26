"""The web demo: a real `epalm demo` server on a free loopback port, driven by gradio_client."""

import shutil
import socket
import threading
import time
import wave
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEMO_PHRASES, DEMO_QUESTION, SEARCH_GALLERY, free_port, teach
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, AuthenticationError

from epalm.demo import serve
from epalm.demo.examples import ASK, DESCRIBE, build_examples
from epalm.demo.models import NoModelsError, checkpoints_to_serve, load_models
from epalm.model import EPALM
from epalm.testing import tiny_model
from epalm.training.compose import settings
from epalm.training.settings import SettingsError

SERVER = pytest.mark.slow  # starts a demo server (about 30 s the first time)
MODELS = {"image": "image-vqa", "video": "video-caption", "audio": "audio-caption"}


@pytest.fixture(scope="module")
def client(demo_server):
    return Client(demo_server, verbose=False)


@pytest.fixture(scope="module")
def examples(demo_runs):
    return demo_runs[1] / "demo-examples"


def arguments(modality, path, task=DESCRIBE, question="", decoding="beam search"):
    """A tab's inputs: model, file, task, question, decoding, beams, max new tokens."""
    return MODELS[modality], handle_file(str(path)), task, question, decoding, 3, 20


def ask(client, modality, path, *args, **kwargs):
    return client.predict(*arguments(modality, path, *args, **kwargs), api_name=f"/{modality}")


@pytest.mark.core
@SERVER
@pytest.mark.parametrize("task", [DESCRIBE, ASK])
@pytest.mark.parametrize("modality", list(DEMO_PHRASES))
def test_each_tab_answers_with_its_models_text(client, examples, modality, task):
    name, caption, answer = DEMO_PHRASES[modality]
    text, who = ask(client, modality, examples / name, task, DEMO_QUESTION)
    assert text == (caption if task == DESCRIBE else answer)  # what the checkpoint was taught
    assert who.startswith(f"**{MODELS[modality]}** answered in ") and who.endswith("(beam search).")


@pytest.mark.core
@SERVER
@pytest.mark.parametrize("name", list(SEARCH_GALLERY))
def test_the_search_tab_finds_each_picture_by_its_caption_and_back(client, demo_runs, name):
    """The demo's retrieval model (taught SEARCH_GALLERY) over the index saved beside it:
    the caption finds its picture first, and the picture its caption."""
    _, caption = SEARCH_GALLERY[name]
    thumbnails, table, who = client.predict("image-retrieval", caption, 4, api_name="/search")
    rows = table["data"]
    assert [row[0] for row in rows] == [1, 2, 3, 4]
    assert rows[0][2] == name and rows[0][3] == caption
    assert len(thumbnails) == 4 and who.startswith("**image-retrieval** searched 4 image files")
    picture = demo_runs[0].parent / "gallery" / name
    captions, _ = client.predict(
        "image-retrieval", handle_file(str(picture)), 2, api_name="/search_media"
    )
    assert captions["data"][0][2] == caption


@SERVER
def test_the_search_tab_asks_for_a_query(client):
    with pytest.raises(AppError, match="Please type what to look for"):
        client.predict("image-retrieval", "  ", 4, api_name="/search")


@SERVER
def test_greedy_decoding_is_offered_too(client, examples):
    name, caption, _ = DEMO_PHRASES["image"]
    text, who = ask(client, "image", examples / name, decoding="greedy")
    assert text == caption and who.endswith("(greedy).")


@pytest.mark.core
@SERVER
@pytest.mark.parametrize(
    ("modality", "suffix"), [("image", ".png"), ("video", ".mp4"), ("audio", ".wav")]
)
def test_a_corrupt_upload_gets_a_friendly_error_and_the_server_keeps_serving(
    client, examples, tmp_path, modality, suffix
):
    name, caption, _ = DEMO_PHRASES[modality]
    corrupt = tmp_path / f"broken{suffix}"
    garbage = np.random.default_rng(0).bytes(4000)
    corrupt.write_bytes((examples / name).read_bytes()[:16] + garbage)  # a real start, then junk
    with pytest.raises(AppError) as caught:
        ask(client, modality, corrupt)
    message = str(caught.value)
    assert message.startswith(f"broken{suffix} could not be read as ")
    assert "Traceback" not in message and "/" not in message  # no paths, client's or server's
    assert ask(client, modality, examples / name)[0] == caption


@SERVER
def test_empty_and_wrong_kind_uploads_say_what_is_wrong(client, examples, tmp_path):
    empty = tmp_path / "empty.png"
    empty.touch()
    with pytest.raises(AppError, match=r"^empty\.png is empty \(0 bytes\); please upload an image"):
        ask(client, "image", empty)
    with pytest.raises(AppError, match=r"^sound-scene\.wav could not be read as an image"):
        ask(client, "image", examples / "sound-scene.wav")
    with pytest.raises(AppError, match=r"^shape\.png could not be read as a video \(a still image"):
        ask(client, "video", examples / "shape.png")


@SERVER
def test_too_long_and_too_large_uploads_are_refused_by_the_configured_limits(client, tmp_path):
    long_sound = tmp_path / "long.wav"  # 6 s, over demo.max_seconds=5
    with wave.open(str(long_sound), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16_000)
        out.writeframes(np.zeros(6 * 16_000, np.int16).tobytes())
    with pytest.raises(AppError, match=r"^long\.wav lasts 6\.0 s; this demo takes audio up to 5 s"):
        ask(client, "audio", long_sound)

    large = tmp_path / "large.png"  # 1.2 MB of noise, over demo.max_file_mb=1
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (640, 640, 3), dtype=np.uint8)
    Image.fromarray(noise).save(large)
    assert large.stat().st_size > 1_000_000
    with pytest.raises((AppError, ValueError), match=r"(?i)(exceeds|up to 1 MB)"):
        ask(client, "image", large)


@SERVER
def test_a_question_is_needed_to_ask_one(client, examples):
    with pytest.raises(AppError, match="Please type a question"):
        ask(client, "image", examples / "shape.png", ASK, "  ")


@SERVER
def test_it_binds_only_the_loopback_address(demo_server):
    port = int(demo_server.rstrip("/").rsplit(":", 1)[1])
    assert demo_server.startswith("http://127.0.0.1:")
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=5):
        pass  # another loopback address: refused unless the server listened on every interface


def test_examples_are_real_files_the_decoders_read(tmp_path):
    from epalm.data.media import load_audio, media_duration, read_image, read_video

    examples = build_examples(tmp_path)
    assert set(examples) == {"image", "video", "audio"}
    for rows in examples.values():
        assert all(
            task in (DESCRIBE, ASK) and (task == DESCRIBE) == (q == "") for _, task, q in rows
        )
    images = {row[0] for row in examples["image"]}
    assert {read_image(p).shape[-1] for p in images} == {3} and len(images) == 4
    for path in {row[0] for row in examples["video"]}:
        assert read_video(path, 4).shape[0] == 4 and media_duration(path) > 1
    (sound,) = {row[0] for row in examples["audio"]}
    assert load_audio(sound).std() > 0.01 and media_duration(sound) == pytest.approx(2.0)


def test_with_no_checkpoint_it_says_which_command_trains_one(tmp_path):
    with pytest.raises(
        NoModelsError, match=r"none under .*/\*/final\)\. Train one with `epalm train`"
    ):
        checkpoints_to_serve([], str(tmp_path))
    from epalm.cli import main

    assert main(["demo", f"demo.runs={tmp_path}"]) == 2


@SERVER
def test_it_finds_the_runs_main_jobs_write(demo_runs):
    found = checkpoints_to_serve([], str(demo_runs[0]))
    names = [p.parent.name for p in found]
    assert names == ["audio-caption", "image-retrieval", "image-vqa", "video-caption"]
    # given checkpoints win over the runs directory
    assert checkpoints_to_serve(["some/final"], str(demo_runs[0])) == [Path("some/final")]


def test_checkpoints_on_one_lm_share_it_and_one_model_serves_threads_at_once(tmp_path):
    image = tmp_path / "a" / "final"
    torch.manual_seed(0)
    model = tiny_model(modalities=["image"])
    media = [np.full((32, 32, 3), value, np.uint8) for value in (0, 255)]
    model.save_pretrained(image)
    shutil.copytree(image, tmp_path / "b" / "final")
    served = load_models([image, tmp_path / "b" / "final"])
    assert list(served) == ["a", "b"] and served["a"].model.lm is served["b"].model.lm

    one = served["a"].model
    expected = [one.caption(m, num_beams=1) for m in media]
    results, errors = {}, []

    def run(i):
        try:
            results[i] = [one.caption(media[i % 2], num_beams=1) for _ in range(5)]
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and expected[0] != expected[1]
    assert all(r == [expected[i % 2]] * 5 for i, r in results.items())


def test_help_lists_the_demo_keys(capsys):
    from epalm.cli import main

    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "demo.host=127.0.0.1" in out and "demo.port=null" in out and "demo.auth=null" in out


def test_demo_settings_are_checked():
    run, _ = settings(["demo.port=8080", "demo.auth=me:secret"])
    assert (run.demo.host, run.demo.port, run.demo.share) == ("127.0.0.1", 8080, False)
    for bad, message in [
        ("demo.port=70000", "not a port"),
        ("demo.auth=nobody", "user:password"),
        ("demo.max_file_mb=0", "must be positive"),
    ]:
        with pytest.raises(SettingsError, match=message):
            settings([bad])


@contextmanager
def serving_in_process(demo_runs, *overrides):
    """The URL of ``epalm.demo.serve`` run in this process (to observe or patch it)."""
    runs, cache = demo_runs
    port = free_port()
    run, _ = settings([f"demo.runs={runs}", f"model_cache={cache}", f"demo.port={port}",
                       "demo.examples=false", *overrides])  # fmt: skip
    app = serve(run, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@SERVER
def test_auth_puts_a_login_in_front(demo_runs):
    with serving_in_process(demo_runs, "demo.auth=me:secret") as url:
        with pytest.raises(AuthenticationError, match="credentials were not provided"):
            Client(url, verbose=False)
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=("me", "wrong"), verbose=False)
        client = Client(url, auth=("me", "secret"), verbose=False)
        name, caption, _ = DEMO_PHRASES["image"]
        assert ask(client, "image", demo_runs[1] / "demo-examples" / name)[0] == caption


def test_teaching_helper_really_teaches():
    # the demo tests above rely on it: a taught model says its phrases, an untaught one does not
    torch.manual_seed(0)
    model = tiny_model(modalities=["image"])
    media = np.zeros((32, 32, 3), np.uint8)
    assert model.caption(media, num_beams=1) != "hello"
    teach(model, media, "hello", "yes")
    assert model.caption(media, num_beams=1) == "hello"
    assert model.answer(media, DEMO_QUESTION, num_beams=1) == "yes"


@SERVER
def test_the_queue_runs_one_model_at_a_time_across_tabs(demo_runs, monkeypatch):
    """demo.concurrency=1: requests to different tabs wait for each other (they share one
    concurrency group), so the machine never runs two models at once."""
    running, most = [], []
    generate = EPALM.generate

    def observed(self, *args, **kwargs):  # the real generate, timed and counted
        running.append(1)
        most.append(len(running))
        time.sleep(0.3)  # long enough for a second request to overlap if it were let in
        try:
            return generate(self, *args, **kwargs)
        finally:
            running.pop()

    monkeypatch.setattr(EPALM, "generate", observed)
    examples = demo_runs[1] / "demo-examples"
    order = ["image", "audio", "video"] * 2
    with serving_in_process(demo_runs, "demo.concurrency=1") as url:
        client = Client(url, verbose=False)
        jobs = [
            client.submit(
                *arguments(m, examples / DEMO_PHRASES[m][0], DESCRIBE, "", "greedy"),
                api_name=f"/{m}",
            )
            for m in order
        ]
        texts = [job.result(timeout=120)[0] for job in jobs]
    assert texts == [DEMO_PHRASES[m][1] for m in order]
    assert len(most) == 6 and max(most) == 1
