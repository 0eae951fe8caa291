"""Ctrl-C while the stack's processes are being stopped: a line saying so, never a stop cut short.

A KeyboardInterrupt raised in the middle of a stop would leave daemons running, their PID files
behind, and a traceback: a stop runs to its end instead (bounded: SIGKILL follows SIGTERM after
at most 10 s).
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from typing import Any, Callable, TypeVar

__all__ = ["STILL_STOPPING", "uninterrupted"]

F = TypeVar("F", bound=Callable[..., Any])

STILL_STOPPING = ("still stopping the local stack's processes (SIGKILL after 10 s): "
                  "Ctrl-C is ignored until they have exited")


def _say_still_stopping(_signum: int, _frame: object) -> None:
    print(STILL_STOPPING, file=sys.stderr, flush=True)


def uninterrupted(stop: F) -> F:
    """Run ``stop`` to its end: each SIGINT meanwhile prints :data:`STILL_STOPPING` instead of raising.

    Only the main thread receives signals in Python (and may set their handlers): elsewhere, as in
    the threads that stop several services at once, ``stop`` runs as it is.
    """

    @functools.wraps(stop)
    def shielded(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return stop(*args, **kwargs)
        previous = signal.signal(signal.SIGINT, _say_still_stopping)
        try:
            return stop(*args, **kwargs)
        finally:
            # None: a handler not set from Python, which cannot be put back; Python's own then.
            signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)

    return shielded  # type: ignore[return-value]
