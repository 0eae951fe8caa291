"""Time budgets and exponential backoff with full jitter."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable


class RetryLater(Exception):
    """The work can succeed later: the entry point answers non-2xx so the event is redelivered."""


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
