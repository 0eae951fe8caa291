"""Carrying out a backfill plan with the function's own batching, then waiting for the batch records.

* A one-call group becomes a batch record created directly in state ``listed``
  (``importUri`` = the source pattern, ``members`` = the listing) whose driver
  message is published with ``Runtime.kick_batch``: the function's Driver
  imports, follows and publishes it like any batch. Its id is deterministic,
  so a rerun finds the record and resumes it instead of importing again. Its
  failed files are named from their source objects, at the listed generation
  (``handlers.failures.files``).
* A staged group goes object by object through ``Intake.admit`` (claims make a
  rerun idempotent), a few objects at a time.

One-call groups wait for a running reconcile sweep to end first: a sweep
admits claimless objects one by one, and the one call would import them again
(the sweep reads backfill records before it admits, which covers a backfill
that starts after this wait).
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable

from handlers.batch import layout
from handlers.batch.intake import DUPLICATE
from handlers.batch.layout import DONE, LISTED
from handlers.batch.reporting import ABANDONED_AFTER_SECONDS
from handlers.cli.backfill_plan import Group, Plan, SourceObject
from handlers.cli.terminal import Progress
from handlers.clients.storage import Conflict
from handlers.entrypoints import ADMIT_BUDGET_SECONDS
from handlers.events import StorageObject
from handlers.reconcile.progress import live_sweep
from handlers.retry import Deadline, RetryLater
from handlers.runtime import Runtime

ADMIT_WORKERS = 8
POLL_SECONDS = 1.0
SWEEP_POLL_SECONDS = 2.0
# A batch of this run: new, resumed from an interrupted run, or covering objects admitted before this run.
NEW, RESUMED, EARLIER = "new", "resumed", "earlier"
NOT_ADMITTED = "not admitted in time (run the command again)"

BatchKey = tuple[str, str]


@dataclass
class Tally:
    """What this run has done so far: for the summary, and for an interrupted run."""

    batches: dict[BatchKey, str] = field(default_factory=dict)
    verdicts: Counter[str] = field(default_factory=Counter)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    admitted: int = 0

    def skip(self, reason: str, name: str) -> None:
        self.skipped.setdefault(reason, []).append(name)


def source_object(bucket: str, item: SourceObject) -> StorageObject:
    return StorageObject(bucket, item.name, item.generation, None, "backfill")


def wait_for_sweep(runtime: Runtime, note: Callable[[str], None], sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.time) -> None:
    """Return once no reconcile sweep is listing (none, published, or its worker gone quiet); ``note`` says why it waits."""
    waiting_for = None
    while (sweep := live_sweep(runtime.state, clock())) is not None:
        if waiting_for != sweep:
            waiting_for = sweep
            note(f"waiting for reconcile sweep {sweep} to end: it admits objects one by one, "
                 "which a one-call import would import again (Ctrl-C stops; nothing is written yet)")
        sleep(SWEEP_POLL_SECONDS)


def submit_exact(runtime: Runtime, plan: Plan, group: Group, tally: Tally, clock: Callable[[], float] = time.time) -> str:
    """Create (or find) the group's batch record in state ``listed`` and publish its driver message.

    Returns how the batch came to be: NEW, RESUMED or EARLIER.
    """
    assert group.source is not None
    rule, batch = group.rule, group.exact_batch_id()
    path = layout.record_path(rule.name, batch)
    now = clock()
    members = [{"id": layout.object_id(source_object(plan.bucket, item)), "bucket": plan.bucket,
                "name": item.name, "generation": item.generation} for item in group.objects]
    record = {"batch": batch, "rule": rule.name, "store": rule.store, "blobStorageClass": rule.blob_storage_class,
              "openedAt": now, "sealedAt": now, "sealedBy": "backfill", "state": LISTED, "members": members,
              "importUri": group.source.uri}
    try:
        runtime.state.create(path, record)
    except Conflict:
        existing = runtime.state.read(path)
        done = existing is not None and existing.data["state"] == DONE
        status = EARLIER if done else RESUMED
        if existing is not None:
            kick_if_stale(runtime, existing.data, clock())
    else:
        status = NEW
        runtime.kick_batch(rule.name, batch)
    tally.batches[(rule.name, batch)] = status
    tally.admitted += len(group.objects)
    tally.verdicts[DUPLICATE if status == EARLIER else status] += len(group.objects)
    return status


def kick_if_stale(runtime: Runtime, record: dict[str, Any], now: float) -> bool:
    """Publish the driver message again for a batch still ``listed`` long after it was sealed.

    Its first driver message was evidently never published (a run interrupted
    between the record and the message). A batch whose driver is alive is left
    alone: two deliveries of one batch at once can publish its result twice.
    """
    if record["state"] != LISTED or now - record["sealedAt"] < ABANDONED_AFTER_SECONDS:
        return False
    runtime.kick_batch(record["rule"], record["batch"])
    return True


def admit_staged(runtime: Runtime, plan: Plan, group: Group, tally: Tally, progress: Progress) -> None:
    """Admit each object through the function's intake, ADMIT_WORKERS at a time."""
    runtime.intake  # noqa: B018 - build the shared collaborators before the workers use them
    pool = ThreadPoolExecutor(max_workers=ADMIT_WORKERS, thread_name_prefix="admit")
    futures: dict[Future[tuple[str, str]], SourceObject] = {
        pool.submit(_admit_one, runtime, plan.bucket, group, item): item for item in group.objects}
    try:
        for future in as_completed(futures):
            item = futures[future]
            try:
                verdict, batch = future.result()
            except RetryLater:
                tally.skip(NOT_ADMITTED, item.name)
            else:
                tally.verdicts[verdict] += 1
                tally.admitted += 1
                key = (group.rule.name, batch)
                if tally.batches.get(key) != NEW:
                    tally.batches[key] = EARLIER if verdict == DUPLICATE else NEW
            progress.advance()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _admit_one(runtime: Runtime, bucket: str, group: Group, item: SourceObject) -> tuple[str, str]:
    """The intake's verdict for one object, and the batch its claim points to."""
    obj = source_object(bucket, item)
    verdict = runtime.intake.admit(obj, group.rule, Deadline(ADMIT_BUDGET_SECONDS))
    claim = runtime.state.read(layout.claim_path(group.rule.name, layout.object_id(obj)))
    if claim is None:
        raise RetryLater(f"claim of {item.name} not found after admission")
    return verdict, claim.data["batch"]


def wait_for_batches(runtime: Runtime, keys: list[BatchKey], progress: Progress, timeout: float | None,
                     sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.time) -> dict[BatchKey, dict[str, Any]]:
    """Batch records once ``done`` (key -> record data); those not done by ``timeout`` are left out."""
    done: dict[BatchKey, dict[str, Any]] = {}
    kicked: set[BatchKey] = set()
    started = time.monotonic()
    while True:
        for key in [k for k in keys if k not in done]:
            record = runtime.state.read(layout.record_path(*key))
            if record is not None and record.data["state"] == DONE:
                done[key] = record.data
                progress.advance()
            elif record is not None and key not in kicked and kick_if_stale(runtime, record.data, clock()):
                kicked.add(key)
        if len(done) == len(keys) or (timeout is not None and time.monotonic() - started >= timeout):
            return done
        sleep(POLL_SECONDS)
