"""Uploader threads: spooled records to the inbox bucket, with retries and backoff, then out of the spool.

An acknowledged instance is never dropped: every failure (network, 5xx, 429,
also 403 or a missing bucket, which an operator can fix) is retried with
exponential backoff and full jitter up to ``max_backoff`` seconds between
attempts, for as long as it takes. One WARNING line per failed attempt at most,
so an outage logs at the backoff's pace, not in a storm. A record waits for its
retry in a queue (a heap of due times), not in a thread: the threads upload the
other records meanwhile, so records that keep failing hold up nothing.

With ``processes`` > 0 the uploads themselves (reading the record, HTTP, JSON,
authentication: Python work) run in that many helper processes: in the
receiver's process they would take turns with the DICOM associations for the
GIL, and the associations' acknowledgements would wait. The helpers run at a
lower CPU priority (niceness +10): a modality waits for each C-STORE's answer,
nobody waits for an upload, so when the CPU is short the receiving goes first
(the spool absorbs the difference). The threads here keep the queue, the
retries and the spool's bookkeeping.

Versions of one object are uploaded in the order received, never two at once,
and an older version still waiting when a newer one is submitted is skipped
(the only record dropped: the newer one replaces it): a changed re-send is never
replaced by the version it corrected, after a restart or an outage that queued both.
"""

from __future__ import annotations

import heapq
import itertools
import multiprocessing
import os
import re
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, quote_plus

from handlers import log
from handlers.privacy import NamePolicy
from handlers.retry import Backoff

from .inbox import Inbox
from .spool import Record, Spool

__all__ = ["Uploader"]


_worker_inbox: Inbox | None = None
#: How much lower the upload helpers' CPU priority is than the receiver's (``nice``).
HELPER_NICENESS = 10


def _lower_priority() -> None:
    """In a new helper process: yield the CPU to the receiver's associations when both want it."""
    try:
        os.nice(HELPER_NICENESS)
    except OSError:  # no nice here: uploads at the receiver's priority
        pass


@dataclass(frozen=True)
class _Failure:
    """What an attempt raised: the exception's class, the HTTP status it carries (if any), its text."""

    kind: str
    status: int | None
    text: str

    @classmethod
    def of(cls, exc: BaseException) -> _Failure:
        if isinstance(exc, UploadError):
            return exc.failure
        return cls(type(exc).__name__, _http_status(exc), str(exc))


def _http_status(exc: BaseException) -> int | None:
    """google-api-core's ``code``, or the ``status_code`` of the exception's ``response``; None without one."""
    code = getattr(exc, "code", None)
    if not isinstance(code, int):
        code = getattr(getattr(exc, "response", None), "status_code", None)
    return int(code) if isinstance(code, int) else None


def _hide_name(text: str, name: str, shown: str) -> str:
    """``text`` with ``name`` replaced by ``shown``, as is and as URLs encode it (``%2F`` or ``%2f`` for ``/``...)."""
    forms = sorted({name, quote(name, safe=""), quote(name), quote_plus(name)}, key=len, reverse=True)
    return re.sub("|".join(re.escape(form) for form in forms), lambda match: shown, text, flags=re.IGNORECASE)


def _put_in_worker(factory: Callable[[], Inbox], segment: Path, offset: int, length: int, name: str,
                   crc32: int, received: float) -> tuple[str | None, _Failure | None]:
    """In a helper process: (outcome, None), or (None, what failed) to be retried by the caller."""
    global _worker_inbox
    try:
        _worker_inbox = _worker_inbox or factory()
        data = Record(segment, offset, length, name, crc32, received).read()
        return _worker_inbox.put(name, data, received), None
    except Exception as exc:  # noqa: BLE001 - reported to the thread that retries it
        return None, _Failure.of(exc)


class UploadError(RuntimeError):
    """An upload failed in a helper process; ``failure`` describes the original exception."""

    def __init__(self, failure: _Failure) -> None:
        super().__init__(f"{failure.kind}: {failure.text}")
        self.failure = failure


class _Processes:
    """Helper processes (spawned, not forked: the receiver has threads) that run ``Inbox.put``."""

    def __init__(self, factory: Callable[[], Inbox], processes: int) -> None:
        self.factory = factory
        self.processes = processes
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_lower_priority)

    def put(self, record: Record) -> str:
        pool = self._pool
        try:
            outcome, error = pool.submit(_put_in_worker, self.factory, record.segment, record.offset, record.length,
                                         record.name, record.crc32, record.received).result()
        except BrokenProcessPool:
            with self._lock:  # a helper died (killed, out of memory): start new ones, retry this record
                if self._pool is pool:
                    self._pool = self._new_pool()
            raise
        if error is not None:
            raise UploadError(error)
        return str(outcome)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Name:
    """The uploads of one object name: the newest record submitted, the older ones it supersedes, its retries."""

    newest: Record
    backoff: Backoff  # the newest record's
    attempt: int = 0  # attempts at the newest record so far
    superseded: list[Record] = field(default_factory=list)  # older versions, never to be uploaded
    uploading: Record | None = None  # the record an attempt is uploading now


class Uploader:
    """``threads`` workers taking records from a queue; each uploads in one of ``processes`` helper processes
    (0: in its own thread, with its own :class:`~gateway.inbox.Inbox`). ``inbox_factory`` must pickle
    when ``processes`` > 0 (e.g. ``functools.partial(GcsInbox, bucket)``).

    One object name is uploaded by one worker at a time, and only its newest record (the last submitted:
    the receiver submits in the order it acknowledges, a restart in spool order): an older version
    still waiting is skipped (freed from the spool, ``on_superseded``), so it can never replace the
    newer one in the bucket. A failed attempt puts its name back in the queue once its backoff delay
    has passed: no worker waits for a retry, so records that keep failing never hold up the others.
    Failures in a row (an outage) also pause every worker, on a backoff of their own that the next
    success resets: a spool of thousands never turns into thousands of attempts a minute against a
    Cloud Storage that answers none of them.
    """

    def __init__(self, spool: Spool, inbox_factory: Callable[[], Inbox], *, bucket: str, threads: int = 4,
                 processes: int = 0, max_backoff: float = 60.0, names: NamePolicy = NamePolicy(),
                 on_uploaded: Callable[[Record], None] = lambda record: None,
                 on_superseded: Callable[[Record], None] = lambda record: None) -> None:
        self.spool = spool
        self.on_uploaded = on_uploaded  # after a record is in the bucket and freed from the spool
        self.on_superseded = on_superseded  # after a record is skipped for a newer one and freed from the spool
        self.inbox_factory = inbox_factory
        self.bucket = bucket
        self.threads = threads
        self.max_backoff = max_backoff
        self.names = names
        self._processes = _Processes(inbox_factory, processes) if processes > 0 else None
        self._lock = threading.Condition()  # guards what follows; notified when a name is queued, and at stop
        self._names: dict[str, _Name] = {}  # every name queued, waiting for a retry or being uploaded
        self._ready: deque[str] = deque()  # names to upload now, first come first served
        self._retries: list[tuple[float, int, str]] = []  # heap of (when, tie-break, name): names waiting to retry
        self._tie_break = itertools.count()
        self._calm = self._backoff()  # the pause after failures in a row; reset by a success
        self._calm_until = 0.0  # monotonic time before which no worker starts an attempt
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.last_success = time.time()

    def submit(self, record: Record) -> None:
        """Queue a durable record for upload; it supersedes a record of the same name not yet uploaded."""
        with self._lock:
            entry = self._names.get(record.name)
            if entry is None:
                self._names[record.name] = _Name(record, self._backoff())
                self._queue(record.name)
                return
            if entry.newest is not entry.uploading:
                entry.superseded.append(entry.newest)
            # uploaded where the name is: next in the queue, at its retry, or after the attempt in progress
            entry.newest, entry.backoff, entry.attempt = record, self._backoff(), 0

    def start(self) -> None:
        for number in range(self.threads):
            worker = threading.Thread(target=self._work, name=f"uploader-{number}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the uploads in progress; whatever is left stays in the spool for the next start."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if self._processes is not None:
            self._processes.close()

    def _backoff(self) -> Backoff:
        return Backoff(initial=0.5, maximum=self.max_backoff)

    def _queue(self, name: str) -> None:
        """(Holding the lock) ``name`` is to be uploaded now."""
        self._ready.append(name)
        self._lock.notify()

    def _put(self, inbox: Inbox | None, record: Record) -> tuple[str, Inbox | None]:
        if self._processes is not None:
            return self._processes.put(record), None
        inbox = inbox or self.inbox_factory()
        return inbox.put(record.name, record.read(), record.received), inbox

    def _work(self) -> None:
        inbox: Inbox | None = None
        while (name := self._take()) is not None:
            inbox = self._attempt(inbox, name)

    def _take(self) -> str | None:
        """The next name to upload (the first queued, due retries queued behind), waiting for one; None at stop."""
        with self._lock:
            while not self._stopping.is_set():
                now = time.monotonic()
                if now < self._calm_until:  # failures in a row: nothing is tried until the pause ends
                    self._lock.wait(self._calm_until - now)
                    continue
                while self._retries and self._retries[0][0] <= now:
                    self._ready.append(heapq.heappop(self._retries)[2])
                if self._ready:
                    return self._ready.popleft()
                self._lock.wait(self._retries[0][0] - now if self._retries else None)
            return None

    def _attempt(self, inbox: Inbox | None, name: str) -> Inbox | None:
        """One attempt at the newest record of ``name``; on failure the name waits for its retry in the queue."""
        record, attempt, superseded = self._claim(name)
        self._skip(superseded)
        started = time.monotonic()
        try:
            outcome, inbox = self._put(inbox, record)
        except Exception as exc:  # noqa: BLE001 - any failure is retried: the instance was acknowledged
            delay = self._retry_later(name, record)
            log.warning("upload failed, will retry", object=self.names.uri(self.bucket, name),
                        attempt=attempt, retryInSeconds=round(delay, 2), **self._error(exc, name))
            return inbox
        self._finish(record, self.on_uploaded)
        self.last_success = time.time()
        log.info("instance uploaded", object=self.names.uri(self.bucket, name), outcome=outcome,
                 bytes=record.length, attempts=attempt, seconds=round(time.monotonic() - started, 3),
                 waitedSeconds=self._waited(record))
        self._release(name, record)
        return inbox

    def _claim(self, name: str) -> tuple[Record, int, list[Record]]:
        """The newest record of ``name``, now being uploaded, its attempt number, and the older ones it superseded."""
        with self._lock:
            entry = self._names[name]
            superseded, entry.superseded = entry.superseded, []
            entry.uploading = entry.newest
            entry.attempt += 1
            return entry.newest, entry.attempt, superseded

    def _retry_later(self, name: str, record: Record) -> float:
        """An attempt at ``record`` failed: its name waits for its backoff delay (returned), or, if a newer
        record of the name arrived meanwhile (superseding this one), is queued now."""
        with self._lock:
            self._calm_until = max(self._calm_until, time.monotonic() + self._calm.next_delay())
            entry = self._names[name]
            entry.uploading = None
            if entry.newest is not record:
                entry.superseded.append(record)
                self._queue(name)
                return 0.0
            delay = entry.backoff.next_delay()
            heapq.heappush(self._retries, (time.monotonic() + delay, next(self._tie_break), name))
            self._lock.notify()  # a waiting worker sets its wait by this retry too
            return delay

    def _release(self, name: str, record: Record) -> None:
        """``record`` is uploaded: its name is done, or queued again if a newer record arrived meanwhile."""
        with self._lock:
            self._calm, self._calm_until = self._backoff(), 0.0
            entry = self._names[name]
            entry.uploading = None
            if entry.newest is record:
                del self._names[name]
            else:
                self._queue(name)

    def _finish(self, record: Record, callback: Callable[[Record], None]) -> None:
        """Free ``record`` from the spool, then tell ``callback``; an error in either is logged, never ends the thread."""
        for step in (self.spool.done, callback):
            try:
                step(record)
            except Exception as exc:  # noqa: BLE001 - the uploads must go on whatever the bookkeeping does
                log.error("upload bookkeeping failed: the uploader goes on", step=getattr(step, "__qualname__", None),
                          object=self.names.uri(self.bucket, record.name), **self._error(exc, record.name))

    def _waited(self, record: Record) -> float:
        """Seconds ``record`` has waited in the spool, by the clock (its reception stamp may be ahead of it)."""
        return round(max(0.0, self.spool.clock() - (record.arrived or record.received)), 3)

    def _error(self, exc: BaseException, name: str) -> dict[str, Any]:
        """Log fields for ``exc``: class and text, HTTP status; with hashed names, ``name`` hashed in the text too."""
        failure = _Failure.of(exc)
        text = _hide_name(failure.text, name, self.names.uri(self.bucket, name)) if self.names.hashed else failure.text
        return {"error": f"{failure.kind}: {text}"[:500], "httpStatus": failure.status}

    def _skip(self, records: list[Record]) -> None:
        """Older versions of a name whose newer one is to be uploaded: out of the spool, never uploaded."""
        for record in records:
            self._finish(record, self.on_superseded)
            log.info("instance superseded by a newer version, not uploaded",
                     object=self.names.uri(self.bucket, record.name), bytes=record.length,
                     waitedSeconds=self._waited(record))
