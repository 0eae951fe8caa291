"""Structured JSON log lines on stderr, and the per-operation log the admin API serves.

Each line is one JSON object: ``time``, ``severity``, ``message`` and fields.
Entries that name an ``operation`` are also kept in memory (the stand-in for
Cloud Logging, where the real API writes per-file import/export errors) and
served by ``GET /emulator/logs?operation=ID``.
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import threading
import warnings
from typing import Any, TextIO

from emulator.clock import rfc3339_now

MAX_KEPT = 20_000  # entries kept in memory (oldest dropped first)


class LogBook:
    """Writes JSON lines and keeps the recent entries, indexed by operation id."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_KEPT)

    def log(self, severity: str, message: str, **fields: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"time": rfc3339_now(), "severity": severity, "message": message}
        entry.update({key: value for key, value in fields.items() if value is not None})
        line = json.dumps(entry, default=str, separators=(",", ":"))
        with self._lock:
            if "operation" in entry:
                self._entries.append(entry)
            stream = self._stream or sys.stderr
            stream.write(line + "\n")
            stream.flush()
        return entry

    def info(self, message: str, **fields: Any) -> None:
        self.log("INFO", message, **fields)

    def warning(self, message: str, **fields: Any) -> None:
        self.log("WARNING", message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.log("ERROR", message, **fields)

    def entries(self, operation: str | None = None) -> list[dict[str, Any]]:
        """Kept entries, oldest first; only those of ``operation`` (an id) when given."""
        with self._lock:
            if operation is None:
                return list(self._entries)
            return [e for e in self._entries if e.get("operation") == operation]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class _Forward(logging.Handler):
    """Python logging records (pydicom, werkzeug) as JSON lines of the LogBook."""

    def __init__(self, book: LogBook) -> None:
        super().__init__(logging.WARNING)
        self.book = book
        self.last = threading.local()  # pydicom logs then warns the same text: write it once

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.last.message = message
        self.book.log(record.levelname, message, logger=record.name)


def capture_python_logs(book: LogBook) -> None:
    """Send Python warnings and WARNING+ logging records to ``book``, so stderr stays JSON lines."""
    forward = _Forward(book)
    root = logging.getLogger()
    root.handlers[:] = [forward]
    root.setLevel(logging.WARNING)

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, *args: Any, **kwargs: Any) -> None:
        if getattr(forward.last, "message", None) == str(message):
            forward.last.message = None
            return
        book.warning(str(message), category=category.__name__, source=f"{filename}:{lineno}")

    warnings.showwarning = show
    warnings.simplefilter("always")  # per-file problems are worth a line each time, not once per process
