"""The reconcile sweep's state in the state bucket: the checkpoint, and the sweep in progress.

``reconcile/checkpoint.json``  where the last complete sweep's window ended (Cloud Storage's clock)
``reconcile/sweep.json``       the current or last sweep: its window, how far each rule's listing
                               got, its counters; ``running`` -> ``publishing`` -> ``done``
``reconcile/clock``            an empty object written to read Cloud Storage's clock

A sweep's window is ``[previous end - overlap, now - settle)`` in ``timeCreated``
terms, with "now" read from Cloud Storage itself (the ``updated`` time of a
write), so no instance clock decides which objects a sweep looks at. The sweep
document is written with generation preconditions: one sweep at a time; one
whose worker stopped updating it is taken over, and resumes where its listing got.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from handlers.batch.layout import DONE, new_batch_id
from handlers.clients.storage import Conflict, Document, StateStore
from handlers.config import Config, Rule

CHECKPOINT_PATH = "reconcile/checkpoint.json"
SWEEP_PATH = "reconcile/sweep.json"
CLOCK_PATH = "reconcile/clock"
RUNNING = "running"
# A running sweep whose heartbeat is older than this (the worker's clock) is taken over.
ABANDONED_AFTER_SECONDS = 300.0

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
        instead of at the checkpoint; it never resumes an unfinished sweep with
        a different window.
        """
        current = self.store.read(SWEEP_PATH)
        if current is not None and current.data["state"] != DONE:
            data = current.data
            alive = data["worker"] != self.worker and self.clock() - data["heartbeat"] < ABANDONED_AFTER_SECONDS
            if alive:
                raise SweepBusy(f"sweep {data['sweep']} is running (worker {data['worker']})")
            if since is None or data.get("since") == since:
                taken = {**data, "worker": self.worker, "heartbeat": self.clock(), "resumed": data["resumed"] + 1}
                return self._replace(current, taken)
        return self._new(current, since)

    def _new(self, current: Document | None, since: float | None) -> Document:
        now = self.store.server_time(CLOCK_PATH)
        settings = self.config.reconcile
        checkpoint = self.store.read(CHECKPOINT_PATH)
        if since is not None:
            start = now - since
        elif checkpoint is not None:
            start = checkpoint.data["to"] - settings.overlap_minutes * 60
        else:
            start = now - settings.first_window_hours * 3600
        end = now - settings.settle_seconds
        data = {"sweep": new_batch_id(now), "state": RUNNING, "window": {"from": start, "to": max(start, end)},
                "since": since, "startedAt": now, "worker": self.worker, "heartbeat": self.clock(), "resumed": 0,
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

    def checkpoint(self, sweep: dict[str, Any]) -> None:
        """Move the checkpoint to this sweep's end (never backwards: a ``--since`` sweep may end earlier)."""
        current = self.store.read(CHECKPOINT_PATH)
        end = sweep["window"]["to"]
        if current is not None and current.data["to"] >= end:
            return
        data = {"to": end, "sweep": sweep["sweep"]}
        try:
            if current is None:
                self.store.create(CHECKPOINT_PATH, data)
            else:
                self.store.replace(CHECKPOINT_PATH, data, current.generation)
        except Conflict:
            raise SweepBusy("the checkpoint moved under this sweep") from None


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
