"""Shared by the package's command-line tools, which print their result (a path) on stdout for `X=$(python -m ...)`."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def stdout_for_result_only() -> Iterator[None]:
    """Send everything Ultralytics writes to stdout to stderr while the block runs.

    Ultralytics logs to stdout, and its first import on a machine (or with a new `YOLO_CONFIG_DIR`) prints a settings
    notice there, so it is imported here with stdout redirected. Its log handler keeps the stream it was created with,
    so that is pointed at stderr too, and put back afterwards.
    """
    with contextlib.redirect_stdout(sys.stderr):
        from ultralytics.utils import LOGGER

        handlers = [h for h in LOGGER.handlers if isinstance(h, logging.StreamHandler)]
        streams = [h.setStream(sys.stderr) for h in handlers]  # None where a handler already wrote to stderr
        try:
            yield
        finally:
            for handler, stream in zip(handlers, streams):
                if stream is not None:
                    handler.setStream(stream)
