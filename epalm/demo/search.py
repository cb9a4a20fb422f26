"""The demo's search tab: each retrieval model (``task=retrieval``) searches its evaluation
gallery, whose indexes training saved beside it: a text finds media (shown as thumbnails where
they are pictures or clips), a file finds captions."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gradio as gr
from tqdm.auto import tqdm

from epalm.demo.messages import tell
from epalm.demo.uploads import Limits, UploadError, check_size, read_upload
from epalm.retrieval.dual_encoder import CONFIG_NAME, DualEncoder
from epalm.retrieval.search import GalleryIndexes
from epalm.zoo.cache import using_cache

log = logging.getLogger("epalm.demo")
PICTURES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".mp4", ".webm", ".mov", ".avi"}


@dataclass
class Searcher:
    name: str  # what the page calls it: the run's name, e.g. "image-retrieval"
    model: DualEncoder
    indexes: GalleryIndexes

    @property
    def modality(self) -> str:
        return self.model.config.modality


def is_retrieval_model(directory: Path) -> bool:
    """Whether a checkpoint holds a dual encoder (its config names an ``align`` variant)."""
    config = directory / CONFIG_NAME
    return config.is_file() and "align" in json.loads(config.read_text())


def load_searchers(
    directories: Sequence[Path], names: Sequence[str], model_cache: str | None = None
) -> dict[str, Searcher]:
    """Each retrieval checkpoint with the gallery indexes saved beside it (by training's final
    evaluation, or `epalm retrieve`); one without any is left out, saying how to make them."""
    searchers = {}
    for directory, name in tqdm(list(zip(directories, names)), desc="loading search models"):
        saved = sorted(d for d in (directory / "index").glob("*") if GalleryIndexes.saved_in(d))
        if not saved:
            log.warning(
                "%s has no search index beside it: `epalm eval` or `epalm retrieve` on its run "
                "builds one; it is not served",
                directory,
            )
            continue
        with using_cache(model_cache):
            model = DualEncoder.from_pretrained(directory).eval()
        searchers[name] = Searcher(name, model, GalleryIndexes.load(saved[0]))
        log.info(
            "searching with %s over %s (%d items)",
            name,
            saved[0].name,
            len(searchers[name].indexes.media),
        )
    return searchers


def gallery_folders(searchers: Mapping[str, Searcher]) -> list[str]:
    """The folders of every gallery's media, which the page may show."""
    return sorted({str(Path(k).parent) for s in searchers.values() for k in s.indexes.media.keys})


def find_media(
    searchers: Mapping[str, Searcher], name: str, query: str, k: float
) -> tuple[list[tuple[str, str]], list[list], str]:
    """Text -> media: ``(thumbnails with their captions, a table of the hits, who answered)``."""
    searcher = _pick(searchers, name)
    if not (query or "").strip():
        raise tell("Please type what to look for, e.g. a small red circle.")
    start = time.perf_counter()
    hits = searcher.indexes.media.search(searcher.model.encode_text([query.strip()]), int(k))
    seconds = time.perf_counter() - start
    rows, thumbnails = [], []
    for rank, (path, cosine) in enumerate(zip(hits.keys[0], hits.scores[0].tolist()), start=1):
        caption = "; ".join(searcher.indexes.captions.get(path, []))
        rows.append([rank, round(cosine, 4), Path(path).name, caption])
        if Path(path).suffix.lower() in PICTURES:
            thumbnails.append((path, f"{rank}. {caption}"))
    files = f"{len(searcher.indexes.media)} {searcher.modality} files"
    return thumbnails, rows, _who(searcher, seconds, files)


def find_captions(
    searchers: Mapping[str, Searcher], limits: Limits, name: str, media: str | None, k: float
) -> tuple[list[list], str]:
    """A file -> the gallery's captions that fit it best: ``(a table, who answered)``."""
    searcher = _pick(searchers, name)
    if not media:
        raise tell(f"Please upload a file for {name} ({searcher.modality}).")
    try:
        check_size(Path(media), searcher.modality, limits)
        decoded = read_upload(media, searcher.model.perceiver, limits)
    except UploadError as err:
        raise tell(str(err)) from None
    start = time.perf_counter()
    hits = searcher.indexes.text.search(searcher.model.encode_media([decoded]), int(k))
    seconds = time.perf_counter() - start
    rows = [
        [rank, round(cosine, 4), caption]
        for rank, (caption, cosine) in enumerate(
            zip(hits.keys[0], hits.scores[0].tolist()), start=1
        )
    ]
    return rows, _who(searcher, seconds, f"{len(searcher.indexes.text)} captions")


def search_tab(searchers: Mapping[str, Searcher], limits: Limits, concurrency: int) -> None:
    """The tab's components and events; endpoints ``/search`` and ``/search_media``."""
    first = next(iter(searchers))
    limit = {"concurrency_limit": concurrency, "concurrency_id": "model"}
    with gr.Row():
        model = gr.Dropdown(list(searchers), value=first, label="Model", elem_id="search-model")
        k = gr.Slider(1, 20, value=8, step=1, label="Results")
    with gr.Row():
        with gr.Column():
            query = gr.Textbox(
                label="Find media by text",
                placeholder="e.g. a small red circle left of a large blue square",
                elem_id="search-query",
            )
            find = gr.Button("Search", variant="primary", elem_id="search-run")
            thumbnails = gr.Gallery(
                label="Best matches", columns=4, height="auto", elem_id="search-gallery"
            )
            table = gr.Dataframe(
                headers=["rank", "cosine", "file", "captions"], elem_id="search-table"
            )
            who = gr.Markdown(elem_id="search-who")
        with gr.Column():
            media = gr.File(label="Find captions for a file", elem_id="search-media")
            describe = gr.Button("Find captions", elem_id="search-media-run")
            captions = gr.Dataframe(
                headers=["rank", "cosine", "caption"], elem_id="search-captions"
            )
            who_media = gr.Markdown(elem_id="search-media-who")
    by_text = partial(find_media, searchers)
    find.click(by_text, [model, query, k], [thumbnails, table, who], api_name="search", **limit)
    query.submit(
        by_text, [model, query, k], [thumbnails, table, who], api_visibility="private", **limit
    )
    by_file = partial(find_captions, searchers, limits)
    describe.click(
        by_file, [model, media, k], [captions, who_media], api_name="search_media", **limit
    )


def _pick(searchers: Mapping[str, Searcher], name: str) -> Searcher:
    if name not in searchers:
        raise tell(f"No search model called {name!r}; choose one of {', '.join(searchers)}.")
    return searchers[name]


def _who(searcher: Searcher, seconds: float, what: str) -> str:
    return f"**{searcher.name}** searched {what} in {seconds:.2f} s."
