"""Time budgets, exponential backoff with full jitter, and which failures asking again may cure."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable


class RetryLater(Exception):
    """The work can succeed later: the entry point answers non-2xx so the event is redelivered."""


def transient(exc: BaseException) -> bool:
    """A service that did not answer (after its client's own retries): connection failures, timeouts, 429, 5xx.

    An error that wraps another says so itself, with a ``transient`` attribute
    (:class:`handlers.clients.storage.SourceCallFailed`).
    """
    import requests
    from google.api_core import exceptions as google_errors

    said = getattr(exc, "transient", None)
    if isinstance(said, bool):
        return said
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, TimeoutError, ConnectionError,
                            google_errors.TooManyRequests, google_errors.ServerError, google_errors.RetryError))


@dataclass
class Deadline:
    """A monotonic time budget."""

    seconds: float
    start: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        return max(0.0, self.start + self.seconds - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0


@dataclass
class Backoff:
    """Delays ``initial * multiplier**n`` capped at ``maximum``, each drawn uniformly in [0, delay] (full jitter)."""

    initial: float = 0.5
    maximum: float = 16.0
    multiplier: float = 2.0
    attempt: int = 0
    rand: Callable[[], float] = random.random

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * self.multiplier ** self.attempt)
        self.attempt += 1
        return ceiling * self.rand()

    def sleep(self, deadline: Deadline) -> bool:
        """Sleep the next delay if the budget allows; False when it would run past the deadline."""
        delay = self.next_delay()
        if delay >= deadline.remaining():
            return False
        time.sleep(delay)
        return True
