"""What the page tells a person when a request cannot be served."""

from __future__ import annotations

import logging

import gradio as gr

log = logging.getLogger("epalm.demo")


def tell(message: str, title: str = "Error") -> gr.Error:
    """A message the page shows; the server logs it in one line (no traceback: it is expected)."""
    log.info("%s: %s", title, message)
    return gr.Error(message, title=title, print_exception=False)
