"""One-line JSON logs that Cloud Logging parses (``severity``, ``message``, fields).

Callers pass object names through :class:`handlers.privacy.NamePolicy` before
logging them: this module writes what it is given.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime, timezone
from typing import Any, TextIO

_lock = threading.Lock()
_stream: TextIO | None = None  # None: whatever sys.stdout is at the time


def _write(severity: str, message: str, fields: dict[str, Any]) -> None:
    entry = {
        "severity": severity,
        "message": message,
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    entry.update({key: value for key, value in fields.items() if value is not None})
    line = json.dumps(entry, default=str, ensure_ascii=False)
    stream = _stream or sys.stdout
    with _lock:
        stream.write(line + "\n")
        stream.flush()


def info(message: str, **fields: Any) -> None:
    _write("INFO", message, fields)


def warning(message: str, **fields: Any) -> None:
    _write("WARNING", message, fields)


def error(message: str, **fields: Any) -> None:
    _write("ERROR", message, fields)


def redirect(stream: TextIO | None) -> TextIO | None:
    """Send log lines elsewhere (the CLI logs to stderr, keeping stdout for results); returns the previous stream."""
    global _stream
    previous, _stream = _stream, stream
    return previous
