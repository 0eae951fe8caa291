"""Running import/export operations in the background: pacing, cancellation, outcome.

With a ``minOperationSeconds`` fault the work is spread over that time (the
``pending`` counter goes down item by item) and the operation is not done
before it elapses. ``failOperation`` ends it with the configured error and
touches nothing.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Callable

from emulator.cloudlogging import log_entry
from emulator.context import Emulator
from emulator.errors import INTERNAL, ApiError
from emulator.faults import MethodFaults
from emulator.operations import Operation, type_url


class Cancelled(Exception):
    """The operation was asked to stop."""


class Pacer:
    """Spreads an operation's items over its minimum duration; raises :class:`Cancelled`."""

    def __init__(self, operation: Operation, started: float, seconds: float) -> None:
        self.operation = operation
        self.started = started
        self.seconds = seconds

    def _until(self, moment: float) -> None:
        if self.operation.sleep(moment - time.monotonic()):
            raise Cancelled()

    def step(self, index: int, total: int) -> None:
        """Before item ``index`` (0-based) of ``total``."""
        self._until(self.started + self.seconds * index / max(total, 1))

    def finish(self) -> None:
        self._until(self.started + self.seconds)


Work = Callable[[Operation, Pacer, MethodFaults], None]


def file_failed(emulator: Emulator, operation: Operation, faults: MethodFaults, kind: str, store: str, source: str,
                code: int, message: str, **fields: str) -> None:
    """One file (import) or instance (export) failed: an ERROR line, and a Cloud Logging entry unless sampled out.

    ``fields`` go to the log line (``object`` or ``instance``...); the entry's
    ``jsonPayload`` has ``source`` and ``error {code, message}`` (canonical code).
    """
    emulator.log.error(f"failed to {kind} {source}: {message}", operation=operation.id, store=store, code=code,
                       **fields)
    entry = log_entry(kind, store, operation.name, emulator.settings.get().log_operation_id, source, code, message)
    written = emulator.cloud_logging.write(entry, operation=operation.name, delay_seconds=faults.log_delay_seconds,
                                           sample_above=faults.log_sample_above)
    if not written:
        emulator.log.info(f"per-file error of {source} not written to Cloud Logging (faults: logSampleAbove "
                          f"{faults.log_sample_above})", operation=operation.id)


def start(emulator: Emulator, operation: Operation, method_id: str, kind: str, response_message: str, work: Work) -> None:
    """Run ``work`` for ``operation`` in a daemon thread; ``kind`` is "import" or "export" for messages."""
    faults = emulator.faults.for_method(method_id)
    started = time.monotonic()
    thread = threading.Thread(
        target=_run,
        args=(emulator, operation, faults, started, kind, response_message, work),
        name=f"{kind}-{operation.id}",
        daemon=True,
    )
    thread.start()


def _run(
    emulator: Emulator,
    operation: Operation,
    faults: MethodFaults,
    started: float,
    kind: str,
    response_message: str,
    work: Work,
) -> None:
    pacer = Pacer(operation, started, faults.min_operation_seconds or 0.0)
    try:
        if faults.failure is not None:
            pacer.finish()
            operation.fail(faults.failure.code, faults.failure.message)
        else:
            work(operation, pacer, faults)
            pacer.finish()
            _finish_counted(emulator, operation, kind, response_message)
    except Cancelled:
        operation.finish_cancelled()
    except ApiError as exc:
        operation.fail(exc.code, exc.message)
    except Exception as exc:  # a bug in the emulator: say so, keep serving
        emulator.log.error(
            f"unexpected error in {kind} operation: {exc!r}",
            operation=operation.id,
            traceback=traceback.format_exc(),
        )
        operation.fail(INTERNAL, f"unexpected emulator error during {kind} ({exc.__class__.__name__}); see the emulator's log")
    body = operation.to_json()
    success, failure, _ = operation.counters()
    emulator.log.log(
        "ERROR" if "error" in body else "INFO",
        f"{kind} operation done",
        operation=operation.id,
        name=operation.name,
        success=success,
        failure=failure,
        error=body.get("error"),
    )


def _finish_counted(emulator: Emulator, operation: Operation, kind: str, response_message: str) -> None:
    """Decide the outcome from the counters (see emulator.settings for the partial-failure styles)."""
    success, failure, _ = operation.counters()
    settings = emulator.settings.get()
    response = {"@type": type_url(operation.version, response_message)}
    if failure == 0:
        operation.finish(response=response)
        return
    where = f"GET /emulator/logs?operation={operation.id} (Cloud Logging: metadata.logsUrl)"
    total = success + failure
    if success == 0:
        operation.fail(settings.partial_failure_code, f"all {total} instance(s) failed to {kind}; per-file errors: {where}")
    elif settings.partial_failure == "error":
        operation.fail(
            settings.partial_failure_code,
            f"{failure} of {total} instance(s) failed to {kind}; per-file errors: {where}",
        )
    else:
        operation.finish(response=response)
