"""Reception stamps that never go back, so a newer version of an instance never looks older than the one it corrects.

The stamps are wall-clock epoch seconds (written into each object's metadata), but
the wall clock steps back when NTP corrects a clock that ran ahead, or a VM resumes:
each stamp is the later of the clock and the previous stamp plus one microsecond.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

__all__ = ["STEP", "Stamps"]

#: The least a stamp is after the one before (an epoch time in seconds keeps a quarter of a microsecond in a float).
STEP = 1e-6


class Stamps:
    """Increasing reception times from ``clock``, safe to take from several associations at once."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._last = float("-inf")
        self._lock = threading.Lock()

    def next(self) -> float:
        """A stamp later than every one issued before: the clock, unless it went back."""
        with self._lock:
            self._last = max(self.clock(), self._last + STEP)
            return self._last

    def after(self, stamp: float) -> None:
        """Stamps issued from now on come after ``stamp`` (the newest one found in the spool at a restart)."""
        with self._lock:
            self._last = max(self._last, stamp)
