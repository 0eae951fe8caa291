"""Reading a child process's output line by line with a deadline, so a child that lives on but goes silent
fails the test instead of hanging it.

>>> process = subprocess.Popen(argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
>>> out, err = PipeLines(process.stdout), PipeLines(process.stderr)
>>> line = out.readline(timeout=30)   # None if no whole line came in time, "" at end of output
>>> process.wait(timeout=30); rest = out.rest(timeout=5)

Each pipe is drained by a thread of its own (so neither can fill up and block
the child); do not also read it with ``communicate()``.
"""

from __future__ import annotations

import queue
import threading
from typing import IO


class PipeLines:
    """The lines of one text pipe, read in the background."""

    def __init__(self, pipe: IO[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self._ended = False
        self._thread = threading.Thread(target=self._drain, args=(pipe,), daemon=True)
        self._thread.start()

    def _drain(self, pipe: IO[str]) -> None:
        try:
            for line in iter(pipe.readline, ""):
                self._lines.put(line)
        except (OSError, ValueError):  # the pipe was closed under us (the test is ending)
            pass
        finally:
            self._lines.put("")

    def readline(self, timeout: float) -> str | None:
        """The next line; "" once the output has ended; None if nothing came within ``timeout`` seconds."""
        if self._ended:
            return ""
        try:
            line = self._lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        self._ended = line == ""
        return line

    def rest(self, timeout: float) -> str:
        """Everything not read yet, once the output has ended (the child exited or closed it).

        Raises AssertionError if it has not ended within ``timeout`` seconds.
        """
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the output did not end within {timeout} s"
        parts = []
        while not self._ended:
            line = self._lines.get_nowait()
            self._ended = line == ""
            parts.append(line)
        return "".join(parts)
