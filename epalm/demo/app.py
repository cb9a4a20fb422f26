"""The demo page: a tab per modality with its natural input, a task choice and a question box,
decoding settings tucked away, examples to click, and which model answered in how long."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from epalm.demo.examples import ASK, DESCRIBE, Example
from epalm.demo.messages import tell
from epalm.demo.models import MODALITIES, ServedModel
from epalm.demo.search import Searcher, search_tab
from epalm.demo.uploads import (
    KIND,
    Limits,
    UploadError,
    check_size,
    read_upload,
    unreadable,
)

log = logging.getLogger("epalm.demo")
GREEDY, BEAM = "greedy", "beam search"
TITLES = {"image": "Image", "video": "Video", "audio": "Sound"}
UNUSABLE = "Cannot use this file"
CONCURRENCY_ID = "model"  # every tab's runs share one limit: they share the machine


@dataclass(frozen=True)
class Decoding:
    """What the decoding settings start at (a run's ``eval.generation``)."""

    num_beams: int = 3
    max_new_tokens: int = 30


def build_app(
    models: Mapping[str, ServedModel],
    limits: Limits,
    examples: Mapping[str, list[Example]],
    decoding: Decoding = Decoding(),
    concurrency: int = 1,
    searchers: Mapping[str, Searcher] | None = None,
) -> gr.Blocks:
    """The page for ``models``; each tab's run is an API endpoint named after its modality.
    Retrieval models (``searchers``) get a search tab."""
    with gr.Blocks(title="epalm demo", analytics_enabled=False) as app:
        gr.Markdown(
            "# epalm\nA frozen language model that perceives through a tiny trained connector "
            "(eP-ALM). Pick a tab, give it a file, and ask it to describe it or answer a question."
            + (" Search finds media by text, and captions by file." if searchers else "")
        )
        with gr.Tabs():
            for modality in MODALITIES:
                with gr.Tab(TITLES[modality], id=modality):
                    served = [m for m in models.values() if m.slot_for(modality)]
                    if not served:
                        gr.Markdown(_no_model_text(modality))
                        continue
                    tab_examples = examples.get(modality, [])
                    _tab(modality, served, limits, tab_examples, decoding, concurrency)
            if searchers:
                with gr.Tab("Search", id="search"):
                    search_tab(searchers, limits, concurrency)
    return app


def respond(
    models: Mapping[str, ServedModel],
    limits: Limits,
    modality: str,
    model_name: str,
    media: str | None,
    task: str,
    question: str,
    decoding: str,
    beams: float,
    max_new_tokens: float,
) -> tuple[str, str]:
    """One request: ``(the model's text, which model answered in how long)``; any problem is a
    ``gr.Error`` with a message for the person (the page shows it; the server keeps serving)."""
    if model_name not in models:
        raise tell(f"No model called {model_name!r}; choose one of {', '.join(models)}.")
    served = models[model_name]
    slot = served.slot_for(modality)  # a tab only lists models that perceive its modality
    if not media:
        raise tell(f"Please upload {KIND[modality]} first, or click an example.")
    if task == ASK and not (question or "").strip():
        raise tell(f"Please type a question, or choose '{DESCRIBE}'.")
    try:  # a multi-task model does only the tasks it was trained for
        served.model.task_for(slot, "vqa" if task == ASK else "caption")
    except ValueError as err:
        raise tell(f"{model_name}: {err}.") from None
    try:
        decoded = read_upload(media, served.model.perceivers[slot], limits)
    except UploadError as err:
        raise tell(str(err), title=UNUSABLE) from None
    options = {
        "num_beams": int(beams) if decoding == BEAM else 1,
        "max_new_tokens": int(max_new_tokens),
    }
    start = time.perf_counter()
    try:
        if task == ASK:
            text = served.model.answer({slot: decoded}, question.strip(), **options)
        else:
            text = served.model.caption({slot: decoded}, **options)
    except Exception:
        log.exception("%s failed on %s", model_name, media)
        raise tell(f"{model_name} failed on this input; the server's log says why.") from None
    seconds = time.perf_counter() - start
    log.info("%s answered in %.2f s: %r", model_name, seconds, text)
    return " ".join(text.split()), f"**{model_name}** answered in {seconds:.2f} s ({decoding})."


def _tab(
    modality: str,
    served: list[ServedModel],
    limits: Limits,
    examples: list[Example],
    start: Decoding,
    concurrency: int,
) -> None:
    first = served[0]
    with gr.Row():
        with gr.Column():
            media = _media_input(modality, limits)
            model = gr.Dropdown([m.name for m in served], value=first.name, label="Model")
            proposed = _task_for(first, modality)
            task = gr.Radio([DESCRIBE, ASK], value=proposed, label="Task")
            question = gr.Textbox(
                label="Question",
                placeholder="e.g. what color is the shape?",
                visible=proposed == ASK,
                elem_id=f"{modality}-question",
            )
            with gr.Accordion("Decoding", open=False):
                decoding = gr.Radio(
                    [GREEDY, BEAM], value=BEAM if start.num_beams > 1 else GREEDY, label="Search"
                )
                beams = gr.Slider(2, 8, value=max(2, start.num_beams), step=1, label="Beams")
                tokens = gr.Slider(
                    1, 100, value=start.max_new_tokens, step=1, label="Max new tokens"
                )
            run = gr.Button("Run", variant="primary", elem_id=f"{modality}-run")
        with gr.Column():
            answer = gr.Textbox(label="Answer", interactive=False, elem_id=f"{modality}-answer")
            who = gr.Markdown(elem_id=f"{modality}-who")
            gr.Markdown(
                f"Files up to {limits.max_file_mb:g} MB"
                + (f", {limits.max_seconds:g} s." if modality != "image" else ".")
            )
    if examples:
        gr.Examples(examples, [media, task, question], label="Examples", cache_examples=False)

    by_name = {m.name: m for m in served}
    task.change(lambda t: gr.update(visible=t == ASK), task, question, api_visibility="private")
    model.change(lambda n: _task_for(by_name[n], modality), model, task, api_visibility="private")
    run_model = partial(respond, by_name, limits, modality)
    inputs, outputs = [model, media, task, question, decoding, beams, tokens], [answer, who]
    limit = {"concurrency_limit": concurrency, "concurrency_id": CONCURRENCY_ID}
    run.click(run_model, inputs, outputs, api_name=modality, **limit)
    question.submit(run_model, inputs, outputs, api_visibility="private", **limit)


def _media_input(modality: str, limits: Limits) -> gr.components.Component:
    where = {"label": TITLES[modality], "elem_id": f"{modality}-media"}
    if modality != "audio":
        where["height"] = 280  # small pictures (the shapes are 64 px) are shown larger
    if modality == "image":
        component = gr.Image(
            type="filepath", image_mode=None, sources=["upload", "clipboard"], **where
        )
    elif modality == "video":
        component = gr.Video(sources=["upload"], format=None, **where)
    else:
        component = gr.Audio(
            sources=["upload", "microphone"], type="filepath", format=None, **where
        )
    return _read_kindly(component, modality, limits)


def _task_for(model: ServedModel, modality: str) -> str:
    return ASK if model.task_on(modality) == "vqa" else DESCRIBE


def _no_model_text(modality: str) -> str:
    return (
        f"No {modality} model is loaded. Train one with `epalm train modality={modality} "
        f"task=vqa` (or `task=caption`), then start `epalm demo` again."
    )


def _read_kindly(
    component: gr.components.Component, modality: str, limits: Limits
) -> gr.components.Component:
    """``component``, whose own reading of an upload (Gradio opens images itself) now fails with
    a message for the person instead of a bare "Error". (Wrapped, not subclassed: Gradio writes
    a .pyi stub beside any module that subclasses a component.)"""
    read = component.preprocess

    def preprocess(payload: Any) -> Any:
        path = getattr(payload, "path", None)
        name = getattr(payload, "orig_name", None) or Path(path or "the file").name
        try:
            if path:
                check_size(Path(path), modality, limits, name)
            return read(payload)
        except UploadError as err:
            raise tell(str(err), title=UNUSABLE) from None
        except gr.Error:
            raise
        except Exception as err:
            reason = str(err).replace(str(path), name)
            raise tell(unreadable(name, modality, reason), title=UNUSABLE) from None

    component.preprocess = preprocess
    return component
