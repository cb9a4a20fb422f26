"""The web demo (Gradio): ``epalm demo`` serves trained checkpoints in a page per modality."""

from epalm.demo.serve import serve

__all__ = ["serve"]
