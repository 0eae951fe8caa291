"""The reconcile sweep's state in the state bucket: the checkpoint, and the sweep in progress.

``reconcile/checkpoint.json``  where the last complete sweep's window ended (Cloud Storage's clock)
``reconcile/sweep.json``       the current or last sweep: its window, how far each rule's listing
                               got, its counters; ``running`` -> ``publishing`` -> ``done``
``reconcile/clock``            an empty object written to read Cloud Storage's clock

A sweep's window is ``[previous end - overlap, now - settle)`` in ``timeCreated``
terms, with "now" read from Cloud Storage itself (the ``updated`` time of a
write), so no instance clock decides which objects a sweep looks at. It never
starts more than MAX_RECONCILE_WINDOW_HOURS before now (claims live 30 days):
a span the cap leaves out is recorded as ``unswept``. A sweep moves the
checkpoint only when its window joins it (starts no later than the checkpoint
minus the overlap, or at the cap), so no object is passed over unannounced.
The sweep document is written with generation preconditions: one sweep at a
time; one whose worker stopped updating it is taken over, and resumes where its
listing got; an unfinished sweep is never discarded.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from handlers.batch.layout import DONE, new_batch_id
from handlers.batch.results import rfc3339
from handlers.clients.storage import Conflict, Document, StateStore, create_or_replace
from handlers.config import MAX_RECONCILE_WINDOW_HOURS, Config, Rule

CHECKPOINT_PATH = "reconcile/checkpoint.json"
SWEEP_PATH = "reconcile/sweep.json"
CLOCK_PATH = "reconcile/clock"
RUNNING = "running"
# A running sweep whose heartbeat is older than this (the worker's clock) is taken over.
ABANDONED_AFTER_SECONDS = 300.0
MAX_WINDOW_SECONDS = MAX_RECONCILE_WINDOW_HOURS * 3600.0

COUNTERS = ("listed", "inWindow", "matched", "covered", "coveredByBackfill", "admitted")


@dataclass(frozen=True)
class Window:
    """``timeCreated`` bounds, epoch seconds: ``start <= created < end``."""

    start: float
    end: float

    def holds(self, created: float) -> bool:
        return self.start <= created < self.end


class SweepBusy(Exception):
    """Another sweep is running and alive."""


class UnfinishedSweep(Exception):
    """A ``--since`` run found an interrupted sweep of another window: it is finished first, never discarded."""


def window_of(sweep: dict[str, Any]) -> Window:
    return Window(sweep["window"]["from"], sweep["window"]["to"])


@dataclass
class Progress:
    """Reads and writes the sweep document and the checkpoint for one worker."""

    store: StateStore
    config: Config
    clock: Callable[[], float] = time.time
    worker: str = ""

    def __post_init__(self) -> None:
        self.worker = self.worker or uuid.uuid4().hex[:12]

    def begin(self, since: float | None = None) -> Document:
        """The sweep to work on: a running one (resumed or taken over) or a new one; SweepBusy if one is alive.

        ``since`` (seconds) starts a new sweep's window that long before now
        instead of at the checkpoint. An unfinished sweep (interrupted, or its
        result not published yet) is resumed, never replaced: a ``since`` run
        finding one of another window raises UnfinishedSweep (a run without
        ``since`` resumes it).
        """
        current = self.store.read(SWEEP_PATH)
        if current is not None and current.data["state"] != DONE:
            data = current.data
            alive = data["worker"] != self.worker and self.clock() - data["heartbeat"] < ABANDONED_AFTER_SECONDS
            if alive:
                raise SweepBusy(f"sweep {data['sweep']} is running (worker {data['worker']})")
            if since is not None and data.get("since") != since:
                window = window_of(data)
                raise UnfinishedSweep(f"sweep {data['sweep']} (objects created {rfc3339(window.start)} .. "
                                      f"{rfc3339(window.end)}) was interrupted and is not finished")
            taken = {**data, "worker": self.worker, "heartbeat": self.clock(), "resumed": data["resumed"] + 1}
            return self._replace(current, taken)
        return self._new(current, since)

    def _new(self, current: Document | None, since: float | None) -> Document:
        now = self.store.server_time(CLOCK_PATH)
        settings = self.config.reconcile
        due = self._due(self.store.read(CHECKPOINT_PATH))
        if since is not None:
            wanted = now - since
        elif due is not None:
            wanted = due
        else:
            wanted = now - settings.first_window_hours * 3600
        start = max(wanted, now - MAX_WINDOW_SECONDS)
        end = now - settings.settle_seconds
        # Only the cap makes a window that joins the checkpoint start after it: [due, start) is then passed over.
        passes_over = due is not None and due < start and joins(start, due, now)
        data = {"sweep": new_batch_id(now), "state": RUNNING, "window": {"from": start, "to": max(start, end)},
                "since": since, "startedAt": now, "worker": self.worker, "heartbeat": self.clock(), "resumed": 0,
                "unswept": {"from": due, "to": start} if passes_over else None,
                "rules": {rule.name: fresh_rule(rule) for rule in self.config.rules}, "admitted": []}
        if current is None:
            try:
                return Document(data, self.store.create(SWEEP_PATH, data))
            except Conflict:
                raise SweepBusy("another sweep started at the same moment") from None
        return self._replace(current, data)

    def _replace(self, current: Document, data: dict[str, Any]) -> Document:
        try:
            return Document(data, self.store.replace(SWEEP_PATH, data, current.generation))
        except Conflict:
            raise SweepBusy("another worker took the sweep over") from None

    def save(self, sweep: Document, data: dict[str, Any]) -> Document:
        """Record progress (and this worker's heartbeat); SweepBusy if another worker took the sweep over."""
        return self._replace(sweep, {**data, "heartbeat": self.clock()})

    def release(self) -> None:
        """Let the next run take this worker's sweep over at once (this run stops: budget spent, publish failed)."""
        current = self.store.read(SWEEP_PATH)
        if current is None or current.data["worker"] != self.worker or current.data["state"] == DONE:
            return
        try:
            self.store.replace(SWEEP_PATH, {**current.data, "heartbeat": 0}, current.generation)
        except Conflict:
            pass  # taken over meanwhile

    def checkpoint(self, sweep: dict[str, Any]) -> bool:
        """Move the checkpoint to this sweep's end if its window joins it; whether it stands there (or later) now.

        A window that starts after the checkpoint minus the overlap (``--since``
        over a later span) leaves it where it is: what was created in between
        was never looked at, and the next scheduled sweep starts there. A window
        cut by the cap joins it (the sweep's ``unswept`` names the span passed
        over). Never backwards.
        """
        current = self.store.read(CHECKPOINT_PATH)
        end = sweep["window"]["to"]
        if current is not None and current.data["to"] >= end:
            return True
        if not joins(sweep["window"]["from"], self._due(current), sweep["startedAt"]):
            return False
        data = {"to": end, "sweep": sweep["sweep"]}
        try:
            create_or_replace(self.store, CHECKPOINT_PATH, data, current)
        except Conflict:
            raise SweepBusy("the checkpoint moved under this sweep") from None
        return True

    def _due(self, checkpoint: Document | None) -> float | None:
        """Where the sweep after the checkpoint starts (its end minus the overlap); None without a checkpoint."""
        return None if checkpoint is None else checkpoint.data["to"] - self.config.reconcile.overlap_minutes * 60


def joins(start: float, due: float | None, now: float) -> bool:
    """Whether a window starting at ``start`` (in a sweep begun at ``now``) may move the checkpoint.

    It may when there is no checkpoint, or it starts no later than where the
    next sweep is ``due``, or than the oldest start the cap allows (the span
    it then passes over is named: ``unswept``).
    """
    return due is None or start <= max(due, now - MAX_WINDOW_SECONDS)


def live_sweep(store: StateStore, now: float) -> str | None:
    """The id of the sweep still listing (``running``, its worker's heartbeat fresh at ``now``), if any."""
    current = store.read(SWEEP_PATH)
    if current is None or current.data["state"] != RUNNING or now - current.data["heartbeat"] >= ABANDONED_AFTER_SECONDS:
        return None
    return current.data["sweep"]


def fresh_rule(rule: Rule) -> dict[str, Any]:
    """A rule's part of a new sweep: where its listing is, and its counters."""
    return {"bucket": rule.pattern.bucket, "prefix": rule.pattern.literal_prefix, "after": None, "done": False,
            "batches": [], **{name: 0 for name in COUNTERS}}
