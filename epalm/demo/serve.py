"""``epalm demo``: load the models, build the page, and serve it (on 127.0.0.1 unless told)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from epalm.training.settings import DemoSettings, RunSettings

if TYPE_CHECKING:
    import gradio

log = logging.getLogger("epalm.demo")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(settings: RunSettings, *, block: bool = True) -> gradio.Blocks:
    """Serve the checkpoints ``settings`` name (or find) until interrupted; returns the app
    when ``block=False``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never call home
    import gradio as gr

    from epalm.demo.app import Decoding, build_app
    from epalm.demo.examples import build_examples
    from epalm.demo.models import checkpoints_to_serve, display_names, load_models
    from epalm.demo.search import gallery_folders, is_retrieval_model, load_searchers
    from epalm.demo.uploads import Limits
    from epalm.zoo.cache import cache_root

    demo = settings.demo
    given = [*([settings.checkpoint] if settings.checkpoint else []), *demo.checkpoints]
    found = checkpoints_to_serve(given, demo.runs)
    retrieval = [d for d in found if is_retrieval_model(d)]
    models = load_models([d for d in found if d not in retrieval], settings.model_cache)
    searchers = load_searchers(retrieval, display_names(retrieval, models), settings.model_cache)
    example_dir = cache_root(settings.model_cache) / "demo-examples"
    examples = build_examples(example_dir) if demo.examples else {}
    generation = settings.eval.generation
    app = build_app(
        models,
        Limits(demo.max_file_mb, demo.max_seconds),
        examples,
        Decoding(generation.num_beams, generation.max_new_tokens),
        concurrency=demo.concurrency,
        searchers=searchers,
    )
    app.queue(max_size=demo.queue_size, default_concurrency_limit=demo.concurrency)
    _warn_if_exposed(demo)
    app.launch(
        server_name=demo.host,
        server_port=demo.port,
        share=demo.share,
        auth=_credentials(demo.auth),
        max_file_size=int(demo.max_file_mb * 1_000_000),
        allowed_paths=sorted(
            {str(Path(row[0]).parent) for rows in examples.values() for row in rows}
            | set(gallery_folders(searchers))
        ),
        theme=gr.themes.Soft(
            font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web fonts: works offline
            font_mono=["ui-monospace", "monospace"],
        ),
        prevent_thread_lock=True,
        show_error=False,  # requests fail with our messages, never a traceback
        quiet=True,
    )
    print(f"epalm demo: serving {', '.join([*models, *searchers])} on {app.local_url}", flush=True)
    if app.share_url:
        print(f"epalm demo: public link {app.share_url}", flush=True)
    if block:
        print("epalm demo: Ctrl+C stops it", flush=True)
        app.block_thread()
    return app


def _credentials(auth: str | None) -> tuple[str, str] | None:
    if auth is None:
        return None
    user, password = auth.split(":", 1)
    return user, password


def _warn_if_exposed(demo: DemoSettings) -> None:
    if (demo.share or demo.host not in LOOPBACK) and demo.auth is None:
        where = "a public share link" if demo.share else f"every interface of {demo.host}"
        log.warning(
            "serving on %s without demo.auth: anyone who reaches it can run the models", where
        )
