"""Naming every failed member of a finished import: Cloud Logging first, then verification.

The API writes one Cloud Logging entry per failed file, naming the file it
read: a staging copy (``gs://STATE/staging/RULE/BATCH/ID.dcm``), whose id maps
it back to the member (bucket, name, generation) through the batch record, or,
for a one-call backfill that imports its source pattern, the source object
``gs://BUCKET/NAME``, a member while its live generation is still the one the
backfill listed (:mod:`handlers.failures.files`); the entry's message is kept
without that file's name or URI, which the API may quote (error texts never
carry a name: :mod:`handlers.privacy`). Logging ingests with a delay
and samples when errors are many, so the collector polls for at most
``wait_seconds`` from the first try (across deliveries: ``since`` is kept in
the batch record), then verifies the members it did not list
(:mod:`handlers.failures.verify`) within ``verify_seconds``. A delivery that
started within the wait and has less than that left (or than half a
delivery's budget, when shorter) hands verification to the next delivery,
which finds the wait over: one Logging query, then verification with its
whole budget. It never claims more than it has: the result says how many
failures are named, and why not all when so.

The query (docs/emulator.md, "Cloud Logging"): the payload type, the resource
type, and the operation by both forms of ``operation.id`` (the full operation
name and its last segment: which one the API writes is not documented), from a
minute before the operation started.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Mapping

from handlers import log
from handlers.clients.cloudlogging import CloudLogging
from handlers.clients.healthcare import ApiError, HealthcareApi, Operation
from handlers.clients.storage import StateStore
from handlers.failures import kinds
from handlers.failures.files import BatchFiles, Pinned, batch_files
from handlers.failures.model import LOGGING, Failure
from handlers.failures.verify import Verifier
from handlers.privacy import without_names
from handlers.retry import Deadline, RetryLater

IMPORT_LOG_TYPE = "type.googleapis.com/google.cloud.healthcare.logging.ImportDicomLogEntry"
RESOURCE_TYPE = "healthcare_dicom_store"
DEFAULT_WAIT_SECONDS = 60.0
DEFAULT_VERIFY_SECONDS = 120.0
POLL_SECONDS = 2.0
MAX_POLL_SECONDS = 10.0
# Kept back from verification's budget for freezing the result.
VERIFY_MARGIN_SECONDS = 5.0


def log_query(operation: str, started: str = "") -> str:
    """The Logging filter for one import operation's per-file entries (either form of ``operation.id``)."""
    op_id = operation.rsplit("/", 1)[-1]
    query = (f'resource.type="{RESOURCE_TYPE}" AND jsonPayload."@type"="{IMPORT_LOG_TYPE}" AND '
             f'(operation.id="{operation}" OR operation.id="{op_id}")')
    since = _minute_before(started)
    return f'{query} AND timestamp>="{since}"' if since else query


def _minute_before(rfc3339: str) -> str:
    try:
        moment = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    except ValueError:
        return ""
    return (moment - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Collected:
    failures: list[Failure]
    incomplete: str | None
    """Why fewer failures are named than the operation counted (None when all are)."""


@dataclass
class FailureCollector:
    store: StateStore
    api: HealthcareApi
    logging: CloudLogging
    wait_seconds: float = DEFAULT_WAIT_SECONDS
    verify_seconds: float = DEFAULT_VERIFY_SECONDS
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep

    def collect(self, record: Mapping[str, Any], operation: Operation, since: float, deadline: Deadline) -> Collected:
        """The batch's failures; RetryLater while Logging may still catch up and this delivery's budget ends,
        or when waiting left this delivery too little to verify."""
        files = batch_files(self.store, record)
        waiting = self.clock() < since + self.wait_seconds  # this delivery may spend its budget waiting
        expected = operation.failure
        project = record["store"].split("/")[1]
        query = log_query(operation.name, operation.create_time)
        delay = POLL_SECONDS
        logging_problem = ""
        while True:
            try:
                listed, pinned = self._from_logging(project, query, record, files, deadline)
                logging_problem = ""
            except ApiError as exc:
                listed, pinned = [], Pinned()
                logging_problem = f"Cloud Logging could not be read ({exc})"
                if not exc.retryable:
                    break
            logged = len(listed) + len(pinned.unpinned) + len(pinned.unread)
            if logged >= expected:
                return Collected(listed, _all_listed(expected, len(listed), pinned))
            if self.clock() >= since + self.wait_seconds:
                break
            if deadline.remaining() < delay + 5.0:
                raise RetryLater(f"Cloud Logging lists {logged} of {expected} failures of {operation.name} "
                                 "so far; looking again on the next delivery")
            self.sleep(delay)
            delay = min(MAX_POLL_SECONDS, delay * 2)
        needed = min(self.verify_seconds, deadline.seconds / 2)
        if waiting and deadline.remaining() - VERIFY_MARGIN_SECONDS < needed:
            raise RetryLater(f"verifying the failures of {operation.name} Cloud Logging did not list needs "
                             f"{needed:g} s, {deadline.remaining():.0f} s left: verifying on the next delivery")
        return self._verify_rest(record, files, listed, pinned, expected, logging_problem, deadline)

    def _from_logging(self, project: str, query: str, record: Mapping[str, Any], files: BatchFiles,
                      deadline: Deadline) -> tuple[list[Failure], Pinned]:
        """The failures Logging names exactly, and what its entries name besides (:class:`Pinned`)."""
        entries = [entry.get("jsonPayload") or {} for entry in self.logging.list_entries(project, query, deadline)]
        pinned = files.pin([str(payload.get("source") or "") for payload in entries])
        found: dict[str, Failure] = {}
        for payload in entries:
            source = str(payload.get("source") or "")
            member = pinned.members.get(source)
            if member is None:
                continue
            error = payload.get("error") or {}
            code = error.get("code") if isinstance(error.get("code"), int) else None
            # the API's text may quote the file it read: never a name in an error text (handlers.privacy)
            message = without_names(str(error.get("message") or "no message in the log entry"),
                                    [member["name"], source])
            found.setdefault(member["id"], Failure.of_member(member, kinds.classify(code, message), code, message,
                                                            LOGGING))
        if pinned.strangers:
            log.warning("Cloud Logging entries of the operation name no member of the batch: ignored",
                        batch=record["batch"], entries=pinned.strangers)
        return list(found.values()), pinned

    def _verify_rest(self, record: Mapping[str, Any], files: BatchFiles, listed: list[Failure], pinned: Pinned,
                     expected: int, logging_problem: str, deadline: Deadline) -> Collected:
        unnamed = len(pinned.unpinned) + len(pinned.unread)
        missing = expected - len(listed) - unnamed
        settled = {failure.id for failure in listed} | pinned.unnamed_members
        candidates = [m for m in record.get("members") or [] if m["id"] not in settled]
        budget = Deadline(max(1.0, min(self.verify_seconds, deadline.remaining() - VERIFY_MARGIN_SECONDS)))
        found = Verifier(self.api).find(record["store"], files, candidates, missing, budget)
        failures = listed + found.failures[:missing]
        if len(failures) >= expected:
            return Collected(failures, None)
        why = [logging_problem or f"Cloud Logging listed {len(listed) + unnamed} of {expected} failures within "
                                  f"{self.wait_seconds:g} s (it samples when errors are many)"]
        why.extend(_unnamed(pinned))
        if pinned.strangers:
            why.append(f"{pinned.strangers} more of Cloud Logging's entries named no file of this import (ignored)")
        why.append(f"reading the objects and the store found {len(found.failures)} more")
        if found.changed:
            why.append(f"{found.changed} of {len(candidates)} other members changed since the backfill listing "
                       "(overwritten or deleted), so what the import read cannot be checked")
        if found.unchecked:
            why.append(f"{found.unchecked} of {len(candidates)} other members could not be checked "
                       f"(verification budget {self.verify_seconds:g} s, unreadable headers or failed calls)")
        if not found.changed and not found.unchecked:
            why.append(f"all {len(candidates)} other members were checked")
        if files.unseen:
            why.append(files.unseen)
        return Collected(failures, f"{expected - len(failures)} of {expected} failures not named: " + "; ".join(why))


def _all_listed(expected: int, named: int, pinned: Pinned) -> str | None:
    """Why not every failure is named when Cloud Logging listed them all (None when all are named)."""
    if named >= expected:
        return None
    return (f"{expected - named} of {expected} failures not named: Cloud Logging listed all {expected}; "
            + "; ".join(_unnamed(pinned)))


def _unnamed(pinned: Pinned) -> list[str]:
    """Why files Cloud Logging listed are not named (a one-call backfill's sources, :mod:`handlers.failures.files`)."""
    why = []
    if pinned.unpinned:
        why.append(f"{len(pinned.unpinned)} of the files Cloud Logging listed changed under the import's source "
                   "pattern since the backfill listing (overwritten, deleted, or added after it): which generation "
                   "the import read is not known, so they are not named")
    if pinned.unread:
        why.append(f"{len(pinned.unread)} of the files Cloud Logging listed could not be read from Cloud Storage "
                   "to confirm the generation the import read (a failed call: see the function's log), so they "
                   "are not named")
    return why


def failures_from_record(items: Iterable[Mapping[str, Any]] | None) -> list[Failure]:
    return [Failure.from_record(item) for item in items or []]
