"""The failed files of past batches, from the state bucket: what the ``failures`` and ``retry`` tools read.

A batch whose result names failures has an index entry ``failed/RULE/BATCH``
(its count, kinds and conclusion time in the entry's metadata, so a time window
costs one listing), and its record keeps every failure. A failure is *open*
while no child batch of its batch (``-replace``, ``-retryN``) lists the object
again: once one does, that child's own result (and failures) take over.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, Sequence

from handlers.batch import layout
from handlers.clients.storage import StateStore
from handlers.failures import readmit
from handlers.failures.model import Failure

@dataclass(frozen=True)
class FailedBatch:
    rule: str
    batch: str
    concluded_at: str
    count: int
    record: Mapping[str, Any]

    @property
    def failures(self) -> list[Failure]:
        return [Failure.from_record(item) for item in self.record.get("failures") or []]


def failed_batches(store: StateStore, rules: Sequence[str] | None, since: datetime | None) -> Iterator[FailedBatch]:
    """Batches whose result names failures, newest first, concluded at or after ``since``."""
    entries = []
    for prefix in ([layout.failed_index_prefix(rule) for rule in rules] if rules else [layout.failed_index_prefix()]):
        for item in store.list(prefix):
            rule, batch = item.name[len(layout.failed_index_prefix()):].split("/", 1)
            concluded = item.metadata.get("concludedAt", "")
            if since is not None and _moment(concluded) < since:
                continue
            entries.append((concluded, rule, batch, int(item.metadata.get("failures") or 0)))
    for concluded, rule, batch, count in sorted(entries, reverse=True):
        record = store.read(layout.record_path(rule, batch))
        if record is not None:
            yield FailedBatch(rule, batch, concluded, count, record.data)


def find_batch(store: StateStore, rules: Sequence[str], batch: str) -> FailedBatch | None:
    """The batch ``batch`` of one of ``rules`` (its record), failed or not."""
    for rule in rules:
        record = store.read(layout.record_path(rule, batch))
        if record is not None:
            concluded = (record.data.get("result") or {}).get("timings", {}).get("concludedAt") or ""
            return FailedBatch(rule, batch, concluded, len(record.data.get("failures") or []), record.data)
    return None


def open_failures(store: StateStore, failed: FailedBatch, kinds: Sequence[str] | None = None
                  ) -> tuple[list[Failure], dict[str, str]]:
    """(failures no child batch has taken over, filtered by kind; object id -> child for the others)."""
    taken = readmit.readmitted_ids(store, failed.rule, failed.batch)
    chosen = [f for f in failed.failures if f.id not in taken and (not kinds or f.kind in kinds)]
    return chosen, taken


def _moment(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
