"""Errors whose message is the whole story for the person who ran the command."""

from __future__ import annotations


class MissingFileError(FileNotFoundError):
    """A file or directory the user named (or a command should have written) is missing; the
    message says which and what to do. The CLI prints it in one line. Any other
    FileNotFoundError is a bug or an environment problem, and keeps its traceback."""
