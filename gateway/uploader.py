"""Uploader threads: spooled records to the inbox bucket, with retries and backoff, then out of the spool.

An acknowledged instance is never dropped: every failure (network, 5xx, 429,
also 403 or a missing bucket, which an operator can fix) is retried with
exponential backoff and full jitter up to ``max_backoff`` seconds between
attempts, for as long as it takes. One WARNING line per failed attempt at most,
so an outage logs at the backoff's pace, not in a storm.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable

from handlers import log
from handlers.retry import Backoff

from .inbox import Inbox
from .spool import Record, Spool

__all__ = ["Uploader"]


class Uploader:
    """``threads`` workers taking records from a queue; each worker has its own :class:`~gateway.inbox.Inbox`."""

    def __init__(self, spool: Spool, inbox_factory: Callable[[], Inbox], *, bucket: str, threads: int = 4,
                 max_backoff: float = 60.0) -> None:
        self.spool = spool
        self.inbox_factory = inbox_factory
        self.bucket = bucket
        self.threads = threads
        self.max_backoff = max_backoff
        self._queue: queue.Queue[Record | None] = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.last_success = time.time()

    def submit(self, record: Record) -> None:
        """Queue a durable record for upload."""
        self._queue.put(record)

    def start(self) -> None:
        for number in range(self.threads):
            worker = threading.Thread(target=self._work, name=f"uploader-{number}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the uploads in progress; whatever is left stays in the spool for the next start."""
        self._stopping.set()
        for _ in self._workers:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        inbox: Inbox | None = None
        while not self._stopping.is_set():
            record = self._queue.get()
            if record is None:
                return
            backoff = Backoff(initial=0.5, maximum=self.max_backoff)
            attempt = 0
            while not self._stopping.is_set():
                attempt += 1
                started = time.monotonic()
                try:
                    inbox = inbox or self.inbox_factory()
                    outcome = inbox.put(record.name, record.read(), record.md5)
                except Exception as exc:  # noqa: BLE001 - any failure is retried: the instance was acknowledged
                    delay = backoff.next_delay()
                    log.warning("upload failed, will retry", object=f"gs://{self.bucket}/{record.name}",
                                attempt=attempt, retryInSeconds=round(delay, 2),
                                error=f"{type(exc).__name__}: {exc}"[:500])
                    self._stopping.wait(delay)
                    continue
                self.spool.done(record)
                self.last_success = time.time()
                log.info("instance uploaded", object=f"gs://{self.bucket}/{record.name}", outcome=outcome,
                         bytes=record.length, attempts=attempt, seconds=round(time.monotonic() - started, 3),
                         waitedSeconds=round(time.time() - record.received, 3))
                break
