"""Terminal output: colour for failures and a progress bar, both only on a terminal."""

from __future__ import annotations

import os
import threading
from typing import TextIO

RED = "\033[31m"
RESET = "\033[0m"


def count(n: int, singular: str, plural: str | None = None) -> str:
    """``1 object``, ``2 objects``."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def red(text: str, stream: TextIO) -> str:
    """``text`` in red when ``stream`` is a terminal (and ``NO_COLOR`` is unset)."""
    if is_terminal(stream) and not os.environ.get("NO_COLOR"):
        return f"{RED}{text}{RESET}"
    return text


class Progress:
    """``label [#####.....] done/total`` redrawn in place on a terminal; plain lines every 10% otherwise.

    Thread-safe: workers call :meth:`advance` concurrently.
    """

    WIDTH = 30

    def __init__(self, stream: TextIO, label: str, total: int) -> None:
        self.stream = stream
        self.label = label
        self.total = total
        self.done = 0
        self.tty = is_terminal(stream)
        self._lock = threading.Lock()
        self._reported_tenth = 0

    def advance(self, step: int = 1) -> None:
        with self._lock:
            self.done += step
            if self.tty:
                self._draw()
            else:
                tenth = self.done * 10 // max(self.total, 1)
                if tenth > self._reported_tenth and self.done < self.total:
                    self._reported_tenth = tenth
                    self.stream.write(f"{self.label}: {self.done}/{self.total}\n")
                    self.stream.flush()

    def finish(self, note: str = "") -> None:
        """The last state, on its own line."""
        with self._lock:
            suffix = f" {note}" if note else ""
            if self.tty:
                self._draw()
                self.stream.write(f"{suffix}\n")
            else:
                self.stream.write(f"{self.label}: {self.done}/{self.total}{suffix}\n")
            self.stream.flush()

    def _draw(self) -> None:
        filled = self.WIDTH * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
        self.stream.flush()
