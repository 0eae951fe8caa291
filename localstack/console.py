"""Why a command could not start the local stack: one line per problem, never a traceback, and the exit code."""

from __future__ import annotations

import sys

from handlers.config import ConfigError

__all__ = ["START_FAILURES", "start_failed"]

#: What :meth:`localstack.stack.Stack.start` raises for a reason the user can fix or chose: a config the functions
#: cannot load, a program missing or not getting ready (StartError), a busy port (PortBusyError), Ctrl-C.
START_FAILURES = (ConfigError, RuntimeError, OSError, KeyboardInterrupt)


def start_failed(command: str, exc: BaseException) -> int:
    """Tell why ``Stack.start`` raised ``exc`` on stderr, each line naming ``command``; the exit code."""
    if isinstance(exc, ConfigError):  # the functions would fail every event on it: nothing was started
        for problem in exc.problems:
            print(f"{command}: {problem}", file=sys.stderr)
        return 2
    if isinstance(exc, KeyboardInterrupt):  # Stack.start has stopped every service it had started
        print(f"{command}: interrupted: stopped what had started", file=sys.stderr)
        return 130
    print(f"{command} failed: {exc}", file=sys.stderr)
    return 1
