"""Ctrl-C while the stack's processes are being stopped: a line saying so, and the stop finishes first.

A KeyboardInterrupt raised in the middle of a stop would leave daemons running, their PID files
behind, and a traceback. A stop runs to its end instead (bounded: SIGKILL follows SIGTERM after
at most 10 s), then the Ctrl-C takes effect: KeyboardInterrupt is raised where the stop returns.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from typing import Any, Callable, TypeVar

__all__ = ["STILL_STOPPING", "uninterrupted"]

F = TypeVar("F", bound=Callable[..., Any])

STILL_STOPPING = ("still stopping the local stack's processes (SIGKILL after 10 s); "
                  "interrupting once they have exited")


class _Held:
    """The SIGINT handler while a stop runs: one line per Ctrl-C, remembered for the end of the stop."""

    def __init__(self) -> None:
        self.pressed = False

    def __call__(self, _signum: int, _frame: object) -> None:
        self.pressed = True
        try:
            print(STILL_STOPPING, file=sys.stderr, flush=True)
        except OSError:  # stderr's reader went with the same Ctrl-C (| tee): the stop must still finish
            pass


def uninterrupted(stop: F) -> F:
    """Run ``stop`` to its end through Ctrl-C: each SIGINT prints :data:`STILL_STOPPING`; then KeyboardInterrupt.

    Runs ``stop`` as it is outside the main thread (only it receives signals, as in the threads
    that stop several services at once), inside another such stop (the outer one raises at its
    end), or where SIGINT is ignored.
    """

    @functools.wraps(stop)
    def shielded(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return stop(*args, **kwargs)
        current = signal.getsignal(signal.SIGINT)
        if current is signal.SIG_IGN or isinstance(current, _Held):
            return stop(*args, **kwargs)
        held = _Held()
        signal.signal(signal.SIGINT, held)
        try:
            result = stop(*args, **kwargs)
        finally:
            # None: a handler not set from Python, which cannot be put back; Python's own then.
            signal.signal(signal.SIGINT, signal.default_int_handler if current is None else current)
        if held.pressed:
            raise KeyboardInterrupt
        return result

    return shielded  # type: ignore[return-value]
