"""Capturing the JSON log lines that code under test writes through ``handlers.log``."""

from __future__ import annotations

import io
from contextlib import contextmanager
from typing import Iterator

from handlers import log


@contextmanager
def log_stream() -> Iterator[io.StringIO]:
    """Every log line written meanwhile, as text; the log goes back to stdout after."""
    stream = io.StringIO()
    log.redirect(stream)
    try:
        yield stream
    finally:
        log.redirect(None)
