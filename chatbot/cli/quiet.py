"""Import TensorFlow without its C++ start-up log spam, for interfaces that face people."""

from __future__ import annotations

import logging
import os


def import_tensorflow_quietly() -> None:
    """Set TensorFlow's log levels, then import it with file descriptor 2 muted.

    The environment variables silence most lines, but absl prints one line ("All log messages
    before absl::InitializeLog()...") before any setting can stop it, so stderr is muted at
    the file-descriptor level for the import only. Errors raised by the import still surface.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
