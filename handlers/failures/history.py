"""The failed files of past batches, from the state bucket: what the ``failures`` and ``retry`` tools read.

A batch whose result names failures, or that failed as a whole or ended ``UNKNOWN`` (:func:`batch_error`),
has an index entry ``failed/RULE/BATCH`` (its count, kinds and conclusion time
in the entry's metadata, so a time window costs one listing), and its record
keeps every failure. A failure is *open* while no child batch of its batch
(``-replace``, ``-retryN``) lists the object again: once one does, that child's
own result (and failures) take over.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, Sequence

from handlers.batch import layout
from handlers.batch.results import FAILED, PARTIAL, REJECTED, UNKNOWN
from handlers.clients.storage import StateStore
from handlers.failures import kinds, readmit
from handlers.failures.model import WHOLE_BATCH, Failure

@dataclass(frozen=True)
class FailedBatch:
    rule: str
    batch: str
    concluded_at: str
    count: int
    record: Mapping[str, Any]

    @property
    def failures(self) -> list[Failure]:
        return failures_of(self.record)

    @property
    def error(self) -> dict[str, Any] | None:
        """The batch's error when it failed as a whole (:func:`batch_error`), else None."""
        return batch_error(self.record)


def batch_error(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"code", "message"}`` of a concluded batch that failed as a whole; None for any other batch.

    A batch failed as a whole when its result says files were not stored (``REJECTED``:
    the import call was refused, no file was read; ``FAILED`` or ``PARTIAL``) but names
    none: the operation ended with an error and no file of its own (PERMISSION_DENIED
    on the staging copies), or neither Cloud Logging nor verification named any. So
    does a batch whose outcome is ``UNKNOWN`` (its operation unreadable, or not done
    by ``followup.deadline_hours``). No member is then known to be stored, so each is
    a failure of the batch's error.
    """
    result = record.get("result") or {}
    if record.get("failures") or result.get("outcome") not in (REJECTED, FAILED, PARTIAL, UNKNOWN):
        return None
    error = result.get("error") or {}
    message = error.get("message") or result.get("failuresIncomplete") or f"the import ended {result['outcome']}"
    return {"code": error.get("code"), "message": str(message)}


def failures_of(record: Mapping[str, Any]) -> list[Failure]:
    """The batch's failures: those its record names, or every member of a batch that failed as a whole.

    The members of a batch whose outcome is unknown are of kind ``unknown``; the others
    of the kind of the batch's error.
    """
    error = batch_error(record)
    if error is None:
        return [Failure.from_record(item) for item in record.get("failures") or []]
    unknown = (record.get("result") or {}).get("outcome") == UNKNOWN
    kind = kinds.UNKNOWN_OUTCOME if unknown else kinds.classify(error["code"], error["message"])
    return [Failure.of_member(member, kind, error["code"], error["message"], WHOLE_BATCH)
            for member in record.get("members") or []]


def index_entry(record: Mapping[str, Any]) -> dict[str, str] | None:
    """The metadata of a concluded batch's ``failed/RULE/BATCH`` entry; None when it has no failure to list."""
    failures = failures_of(record)
    if not failures:
        return None
    return {
        "failures": str(len(failures)),
        "kinds": ",".join(sorted({f.kind for f in failures})),
        "concludedAt": str((record.get("result") or {}).get("timings", {}).get("concludedAt") or ""),
    }


def failed_batches(store: StateStore, rules: Sequence[str] | None, since: datetime | None) -> Iterator[FailedBatch]:
    """Batches with failures (named, or failed as a whole), newest first, concluded at or after ``since``."""
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
            return FailedBatch(rule, batch, concluded, len(failures_of(record.data)), record.data)
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
