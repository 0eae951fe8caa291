"""Reads that the admissions in flight in one instance share (docs/design.md, "Intake").

An instance admits many objects at once (one request per finalize event, all
joining the same open batch). Each admission needs to know the rule's current
batch and, after writing its marker, that the batch is still unsealed. Those
answers are the same for every admission in flight, so one Cloud Storage read
serves them all, like a group commit: a caller is given the result of a read
that *started* after the moment it names (``not_before``), so a read
that must follow the caller's own write (the seal check after the marker) is
never answered by an older one. Callers that arrive while a fresh-enough read is
in flight wait for it; the others wait for it to end, then one of them starts the
next read for all of them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")

# Finished reads kept per instance before the oldest are forgotten (one per rule and per recent batch).
MAX_KEPT = 256


@dataclass
class _Read:
    started: float
    finished: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


class SharedReads:
    """One read in flight per key, shared by every caller it is fresh enough for."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._reads: dict[Hashable, _Read] = {}

    def get(self, key: Hashable, read: Callable[[], T], not_before: float) -> T:
        """The result of a ``read`` of ``key`` that started after ``not_before`` (a time of :attr:`clock`)."""
        while True:
            with self._lock:
                current = self._reads.get(key)
                lead = current is None or (current.finished.is_set() and current.started <= not_before)
                if lead:
                    current = self._reads[key] = _Read(self.clock())
                    self._forget_old()
            if lead:
                return self._run(current, read)
            current.finished.wait()
            if current.started > not_before:
                if current.error is not None:
                    raise current.error
                return current.value
            # That read started before this caller needed one: the next round serves it.

    @staticmethod
    def _run(current: _Read, read: Callable[[], T]) -> T:
        try:
            current.value = read()
            return current.value
        except BaseException as exc:
            current.error = exc
            raise
        finally:
            current.finished.set()

    def _forget_old(self) -> None:
        """Drop the oldest finished reads past :data:`MAX_KEPT` (called under the lock)."""
        if len(self._reads) <= MAX_KEPT:
            return
        finished = sorted((key for key, read in self._reads.items() if read.finished.is_set()),
                          key=lambda key: self._reads[key].started)
        for key in finished[: len(self._reads) - MAX_KEPT]:
            del self._reads[key]
