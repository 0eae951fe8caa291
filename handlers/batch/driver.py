"""Driving one batch from open to published result (docs/design.md, "Driver").

A durable follow-up message per batch runs this; every delivery resumes from
the batch record's state, so an instance dying anywhere only delays the batch:

    open lease --window, quiet or full--> seal created --markers listed, copied--> record created
    importing (claimed) --import called--> operation noted beside the record
    --operation done--> [collecting --failures named--> [acting --policies applied-->]] publishing
    --result published--> done (staging removed)

``collecting`` only when the operation counted failures (or ended with an
error): the failed files are read from Cloud Logging, and verified when
Logging lists fewer (``handlers.failures.collect``). ``acting`` only when the
rule's ``on_failure`` / ``on_conflict`` asks for more than a report: tag or
quarantine each failed file, write the child batch that replaces conflicts
(``handlers.failures.policies``, ``.replace``, ``.readmit``).

Each transition is a conditional write of the record, so concurrent deliveries
of the same message cannot both import or both publish.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from handlers import log
from handlers.batch import layout
from handlers.batch.layout import (
    ACTING,
    COLLECTING,
    DONE,
    IMPORTING,
    LISTED,
    PUBLISHING,
    SEALING,
)
from handlers.batch.reporting import ABANDONED_AFTER_SECONDS, Reporter, new_worker
from handlers.batch.staging import COPY_THREADS, GONE, StagingCopies
from handlers.batch.results import (
    CANCELLED,
    MAX_LISTED_FAILURES,
    REJECTED,
    UNKNOWN,
    import_message,
    operation_hint,
    outcome_of,
    rejection_hint,
    unknown_hint,
)
from handlers.clients.cloudlogging import CloudLogging
from handlers.clients.healthcare import ApiError, HealthcareApi, Operation
from handlers.clients.pubsub import Publisher
from handlers.clients.storage import Conflict, Document, Listed, StateStore, create_if_absent
from handlers.config import REPLACE, REPORT, Config, Rule
from handlers.failures import history, policies, readmit, replace
from handlers.failures.collect import DEFAULT_VERIFY_SECONDS, DEFAULT_WAIT_SECONDS, FailureCollector, failures_from_record
from handlers.failures.kinds import CONFLICT
from handlers.failures.model import Failure
from handlers.retry import Deadline, RetryLater

POLL_SECONDS = 1.0
# The acting step saves its progress every this many failures, and before its delivery's budget ends.
ACT_PERSIST_EVERY = 100
ACT_MARGIN_SECONDS = 15.0
# Why a batch was sealed (the record's ``sealedBecause``).
FULL, QUIET, WINDOW = "full", "quiet", "window"


@dataclass
class Driver:
    store: StateStore
    config: Config
    api: HealthcareApi
    publisher: Publisher
    logging: CloudLogging | None = None
    kick: Callable[[str, str], None] | None = None
    """Publishes a batch's driver message (for the child batches that replace conflicts)."""
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    failure_logs_wait_seconds: float = DEFAULT_WAIT_SECONDS
    failure_verify_seconds: float = DEFAULT_VERIFY_SECONDS
    reporter: Reporter = field(init=False)
    collector: FailureCollector = field(init=False)

    def __post_init__(self) -> None:
        self.reporter = Reporter(self.store, self.publisher, self.config.results_topic, self.clock)
        self.collector = FailureCollector(self.store, self.api, self.logging or CloudLogging(),
                                          self.failure_logs_wait_seconds, self.failure_verify_seconds,
                                          self.clock, self.sleep)

    def drive(self, rule: str, batch: str, deadline: Deadline) -> str:
        """Advance the batch as far as the budget allows; its final state, or RetryLater."""
        staging = StagingCopies(self.store, rule, batch)
        try:
            return self._drive(rule, batch, deadline, staging)
        finally:
            staging.close()

    def _drive(self, rule: str, batch: str, deadline: Deadline, staging: StagingCopies) -> str:
        path = layout.record_path(rule, batch)
        worker = new_worker()
        record = self.store.read(path)
        if record is None:
            record = self._seal(rule, batch, deadline, worker, staging)
            if record is None:
                log.warning("follow-up names a batch that was never opened: dropped", rule=rule, batch=batch)
                return "missing"
        while True:
            state = record.data["state"]
            if deadline.expired and state != DONE:
                raise RetryLater(f"batch {batch} is {state}; continuing on the next delivery")
            try:
                if state == DONE:
                    self._clean_staging(rule, batch)
                    return DONE
                if state == SEALING:
                    record = self._list_members(record, path)
                elif state == LISTED:
                    record = self._claim_import(record, path, worker, staging)
                elif state == IMPORTING and record.data.get("operation") is None and record.data.get("importBy") == worker:
                    record = self._call_import(record, path, deadline, worker)
                elif state == IMPORTING:
                    record = self._follow(record, path, deadline, worker)
                elif state == COLLECTING:
                    record = self._collect(record, path, deadline, worker)
                elif state == ACTING:
                    record = self._act(record, path, deadline, worker)
                elif state == PUBLISHING:
                    self._write_failure_files(record.data)
                    record = self.reporter.publish(record, path, worker)
                else:
                    raise ValueError(f"batch record {path} has unknown state {state!r}")
            except Conflict:
                record = self.store.read(path) or record

    # open -> sealing
    def _seal(self, rule: str, batch: str, deadline: Deadline, worker: str,
              staging: StagingCopies) -> Document | None:
        """Wait for the window to close, seal (create the seal object), list the markers, write the record once.

        The lease is not written: sealing is the creation of ``seals/RULE/BATCH.json``,
        a new object, so a rule's batches rewrite one fixed name (the lease) once
        each, when they open (Cloud Storage takes one write per second per name).
        A delivery that finds the seal but no record (its sealer died) lists and
        records. None: the batch was never opened.
        """
        path = layout.seal_path(rule, batch)
        seal = self.store.read(path)
        if seal is None:
            lease = self.store.read(layout.lease_path(rule))
            if lease is None or lease.data["batch"] != batch:
                return self.store.read(layout.record_path(rule, batch))
            because = self._wait_for_window(rule, batch, lease.data["openedAt"], deadline, staging)
            seal = self._create_seal(path, lease.data, worker, because) if because else None
            seal = seal or self.store.read(path)
            if seal is None:
                raise RetryLater(f"the seal of batch {batch} is not readable yet")
        return self._record_members(seal.data, worker, staging)

    def _create_seal(self, path: str, lease: dict[str, Any], worker: str, because: str) -> Document | None:
        """The seal this delivery created; None when another delivery created it first."""
        data = {key: lease.get(key) for key in ("batch", "rule", "store", "blobStorageClass", "openedAt")}
        data.update(sealedAt=self.clock(), sealedBy=worker, sealedBecause=because)
        try:
            return Document(data, self.store.create(path, data))
        except Conflict:
            return None

    def _record_members(self, seal: dict[str, Any], worker: str, staging: StagingCopies) -> Document:
        """The record, created once: the markers listed after the seal are the members.

        This listing is the membership only if this delivery creates the record:
        another delivery's listing, made earlier, may win without a marker that
        landed since. So nothing is copied here before the record exists but what
        the window's listings started (markers listed before any seal: members
        whichever listing wins). When every member's copy was started that way and
        at most one round of them is left (the usual case), the copies are
        finished first and the record is created already ``importing`` under
        ``worker``'s claim (or ``done`` when no member is left), so the import call
        follows at once: Cloud Storage's one write per second per name would make
        a separate claim write wait a second. Otherwise (a member only this
        listing shows, as when the seal was found rather than made, or a batch
        sealed full while members kept arriving) the record is created ``listed``:
        intakes whose marker met the seal are waiting for that listing, and
        ``_claim_import`` copies the record's members, then claims.
        """
        rule, batch = seal["rule"], seal["batch"]
        members = self._listed_members(rule, batch)
        listed = {**seal, "state": LISTED, "members": members,
                  "importUri": layout.import_uri(self.store.bucket, rule, batch)}
        data = (listed if staging.unstarted(members) or staging.unfinished(members) > COPY_THREADS
                else self._claimed(_without_skipped(listed, staging.finish(members)), worker))
        path = layout.record_path(rule, batch)
        try:
            generation = self.store.create(path, data)
        except Conflict:
            return self.store.read(path)  # another delivery recorded it first: its listing stands
        log.info("batch sealed", rule=rule, batch=batch, objects=len(members), reason=seal.get("sealedBecause"))
        return Document(data, generation)

    def _listed_members(self, rule: str, batch: str) -> list[dict[str, str]]:
        return [_member(listed) for listed in self.store.list(layout.member_prefix(rule, batch))]

    def _wait_for_window(self, rule: str, batch: str, opened_at: float, deadline: Deadline,
                         staging: StagingCopies) -> str | None:
        """Wait until the batch should be sealed; why: FULL, QUIET or WINDOW (docs/design.md, "Window").

        Quiet means the count of markers stopped growing: two listings with the
        same count, the later one started at least ``seal_after_quiet_seconds``
        after the earlier one ended. Both times are this process's monotonic
        clock, so no clock of another instance (nor Cloud Storage's) is compared;
        a resumed delivery starts measuring afresh, which can only seal later.
        A listing's members are certain when no seal exists after it (a marker
        listed before the seal is in every listing after it), so after a listing
        that shows a new marker the seal is read: none, and their staging copies
        start at once; one, and another delivery sealed the batch: None.
        """
        batching = self.config.batching
        closes_at = opened_at + batching.max_wait_seconds
        quiet = batching.seal_after_quiet_seconds
        poll = min(POLL_SECONDS, quiet / 4) if quiet else POLL_SECONDS
        prefix = layout.member_prefix(rule, batch)
        count, unchanged_since = -1, 0.0  # the count, and when the listing that first saw it ended
        while self.clock() < closes_at:
            listing_started = self.monotonic()
            members = [_member(item) for item in self.store.list(prefix)]
            if staging.unstarted(members):
                if self._sealed(rule, batch):
                    return None
                staging.start(members)
            listed = len(members)
            if listed >= batching.max_objects:
                return FULL
            if listed != count:
                count, unchanged_since = listed, self.monotonic()
            elif quiet and count > 0 and listing_started - unchanged_since >= quiet:
                return QUIET
            if deadline.remaining() < poll:
                raise RetryLater(f"batch {batch} window still open")
            self.sleep(min(poll, max(0.0, closes_at - self.clock())))
        return WINDOW

    def _sealed(self, rule: str, batch: str) -> bool:
        return self.store.read(layout.seal_path(rule, batch)) is not None

    # sealing -> listed: records an older version created before listing (it sealed the lease)
    def _list_members(self, record: Document, path: str) -> Document:
        rule, batch = record.data["rule"], record.data["batch"]
        # seal the way intakes now look for, before listing
        create_if_absent(self.store, layout.seal_path(rule, batch), {key: record.data.get(key) for key in (
            "batch", "rule", "store", "blobStorageClass", "openedAt", "sealedAt", "sealedBy")})
        members = self._listed_members(rule, batch)
        data = {**record.data, "state": LISTED, "members": members,
                "importUri": layout.import_uri(self.store.bucket, rule, batch)}
        generation = self.store.replace(path, data, record.generation)
        log.info("batch sealed", rule=rule, batch=batch, objects=len(members), reason=record.data.get("sealedBecause"))
        return Document(data, generation)

    # listed -> importing (records created listed: older versions', child batches', backfills')
    def _claim_import(self, record: Document, path: str, worker: str, staging: StagingCopies) -> Document:
        """Copy the members still to copy into staging, then claim the import for ``worker`` (one write)."""
        data = record.data
        if layout.imports_staging(data, self.store.bucket):
            data = _without_skipped(data, staging.finish(data["members"]))
        claimed = self._claimed(data, worker)
        return Document(claimed, self.store.replace(path, claimed, record.generation))

    def _claimed(self, data: dict[str, Any], worker: str) -> dict[str, Any]:
        """``data`` claimed for import by ``worker``; ``done`` instead when it has no member to import."""
        if not data["members"]:
            log.info("batch has nothing to import", rule=data["rule"], batch=data["batch"],
                     skipped=len(data.get("skipped") or []))
            return {**data, "state": DONE}
        return {**data, "state": IMPORTING, "operation": None, "importStartedAt": self.clock(), "importBy": worker}

    # importing, claimed by this worker -> importing with an operation
    def _call_import(self, record: Document, path: str, deadline: Deadline, worker: str) -> Document:
        """Call import under this worker's claim and note the operation in a new object beside the record.

        The record itself is not written (its next write would wait out Cloud
        Storage's second since the claim): it gets the operation's name with its
        outcome. A refused call that may succeed later returns the record to
        ``listed``; any other refusal is the result ``REJECTED``.
        """
        data = record.data
        self._remove_strays(data)
        try:
            # A child batch replacing conflicts deletes the stored instances only now, under the import claim.
            replace.replace_stored(self.store, self.api, data, self.config.names, deadline)
            operation = self.api.import_dicom(data["store"], data["importUri"], deadline, data.get("blobStorageClass"))
        except ApiError as exc:
            if exc.retryable:
                released = {key: value for key, value in data.items()
                            if key not in ("operation", "importStartedAt", "importBy")}
                self.store.replace(path, {**released, "state": LISTED, "lastError": str(exc)}, record.generation)
                raise RetryLater(f"import call for batch {data['batch']} not accepted yet: {exc}") from None
            return self._conclude(record, path, worker, outcome=REJECTED,
                                  error={"code": exc.code, "status": exc.status, "message": exc.message},
                                  hint=rejection_hint(exc.code, data["store"], self.store.bucket))
        # absent unless this worker's own retried call noted it (the name is this worker's)
        create_if_absent(self.store, layout.operation_path(data["rule"], data["batch"], worker),
                         {"operation": operation.name, "startedAt": self.clock()})
        log.info("import started", rule=data["rule"], batch=data["batch"], operation=operation.name,
                 objects=len(data["members"]))
        return Document({**data, "operation": operation.name}, record.generation)

    def _remove_strays(self, data: dict[str, Any]) -> None:
        """Delete the copies in the batch's staging folder that are not its members' (the import reads its ``*``).

        There is usually none: drivers copy only members. A copy that an earlier
        delivery made of a member the record then skipped (its generation gone,
        or its copy refused, since) is one; so is a copy a driver of an earlier
        version made of a marker its losing listing showed. A listing and
        deletes, not an import of named files: the API takes one URI.
        """
        rule, batch = data["rule"], data["batch"]
        if not layout.imports_staging(data, self.store.bucket):
            return
        members = {layout.staging_path(rule, batch, member["id"]) for member in data["members"]}
        strays = [item.name for item in self.store.list(layout.staging_prefix(rule, batch)) if item.name not in members]
        for name in strays:
            self.store.delete(name)
        if strays:
            log.warning("staging copies of non-members deleted before the import", rule=rule, batch=batch,
                        copies=len(strays))

    def _started_operation(self, data: dict[str, Any]) -> str | None:
        """The operation the claiming worker noted beside the record, if it got that far."""
        if not data.get("importBy"):
            return None
        note = self.store.read(layout.operation_path(data["rule"], data["batch"], data["importBy"]))
        return note.data["operation"] if note is not None else None

    # importing -> publishing
    def _follow(self, record: Document, path: str, deadline: Deadline, worker: str) -> Document:
        data = record.data
        if data.get("operation") is None and (noted := self._started_operation(data)) is not None:
            data = {**data, "operation": noted}
            record = Document(data, record.generation)
        if data.get("operation") is None:
            if self.clock() - data["importStartedAt"] < ABANDONED_AFTER_SECONDS:
                raise RetryLater(f"another worker is starting the import of batch {data['batch']}")
            log.warning("import start was abandoned by a dead worker: starting it again", batch=data["batch"])
            reverted = {**data, "state": LISTED}
            return Document(reverted, self.store.replace(path, reverted, record.generation))
        if self.clock() > data["sealedAt"] + self.config.followup_deadline_hours * 3600:
            return self._conclude(record, path, worker, outcome=UNKNOWN, error={
                "code": 4, "status": "DEADLINE_EXCEEDED",
                "message": f"operation not done after {self.config.followup_deadline_hours:g} h: no longer followed"},
                hint=unknown_hint(data["batch"]))
        try:
            operation = self.api.wait(data["operation"], deadline)
        except ApiError as exc:
            if exc.retryable:
                raise RetryLater(f"operation {data['operation']} not readable yet: {exc}") from None
            return self._conclude(record, path, worker, outcome=UNKNOWN,
                                  error={"code": exc.code, "status": exc.status, "message": exc.message},
                                  hint=unknown_hint(data["batch"]))
        if not operation.done:
            raise RetryLater(f"operation {operation.name} still running ({operation.pending} pending)")
        return self._after_operation(record, path, worker, operation)

    def _after_operation(self, record: Document, path: str, worker: str, operation: Operation) -> Document:
        """An ended operation: on to naming its failures (``collecting``), or straight to the result."""
        data = record.data
        if operation.failure > 0 or (operation.error and operation.error.get("code") != CANCELLED):
            collecting = {**data, "state": COLLECTING, "operationResult": operation.to_record(),
                          "collectingSince": self.clock()}
            return Document(collecting, self.store.replace(path, collecting, record.generation))
        outcome = outcome_of(operation)
        return self._conclude(record, path, worker, outcome=outcome, operation=operation,
                              hint=operation_hint(outcome, operation, self.store.bucket))

    # collecting -> publishing
    def _collect(self, record: Document, path: str, deadline: Deadline, worker: str) -> Document:
        """Name the failed members (Cloud Logging, then verification), then freeze the result."""
        data = record.data
        operation = Operation.from_record(data["operationResult"])
        collected = self.collector.collect(data, operation, data["collectingSince"], deadline)
        names = self.config.names
        for failure in collected.failures:
            log.warning("file not imported", rule=data["rule"], batch=data["batch"],
                        object=names.uri(failure.bucket, failure.name), generation=failure.generation,
                        kind=failure.kind, reason=failure.message[:300], source=failure.source)
        if collected.incomplete:
            log.warning("not every failed file could be named", rule=data["rule"], batch=data["batch"],
                        reason=collected.incomplete)
        named = {**data, "failures": [failure.to_record() for failure in collected.failures],
                 "failuresIncomplete": collected.incomplete}
        rule = self.config.rule_named(data["rule"])
        if rule is not None and _needs_action(rule, collected.failures):
            acting = {**named, "state": ACTING}
            return Document(acting, self.store.replace(path, acting, record.generation))
        return self._conclude_failures(Document(named, record.generation), path, worker)

    # acting -> publishing
    def _act(self, record: Document, path: str, deadline: Deadline, worker: str) -> Document:
        """Apply the rule's policies to each failed file; progress is saved, so a long list spans deliveries."""
        data = record.data
        rule = self.config.rule_named(data["rule"])
        failures = failures_from_record(data.get("failures"))
        if rule is not None and rule.on_conflict == REPLACE:
            conflicts = [f for f in failures if f.kind == CONFLICT and f.action is None]
            if conflicts:
                record = self._plan_replacement(record, path, conflicts, deadline)
                data, failures = record.data, failures_from_record(record.data.get("failures"))
        if rule is not None and rule.on_failure.action != REPORT:
            applied = 0
            for index, failure in enumerate(failures):
                if failure.action is not None:
                    continue
                action = policies.apply(self.store, rule.on_failure, failure, data["batch"])
                failures[index] = failure.with_action(action)
                destination = action.get("to")
                log.info("failure policy applied", rule=data["rule"], batch=data["batch"],
                         object=self.config.names.uri(failure.bucket, failure.name), generation=failure.generation,
                         policy=action.get("policy"), done=action.get("done"), moved=action.get("moved"),
                         to=self.config.names.uri(*_bucket_and_name(destination)) if destination else None,
                         error=action.get("error"))
                applied += 1
                if applied % ACT_PERSIST_EVERY == 0 or deadline.remaining() < ACT_MARGIN_SECONDS:
                    record = self._save_failures(record, path, failures)
                    data = record.data
                    if deadline.remaining() < ACT_MARGIN_SECONDS:
                        raise RetryLater(f"failure policies of batch {data['batch']}: {applied} applied, "
                                         "continuing on the next delivery")
        record = Document({**data, "failures": [f.to_record() for f in failures]}, record.generation)
        return self._conclude_failures(record, path, worker)

    def _plan_replacement(self, record: Document, path: str, conflicts: list[Failure], deadline: Deadline) -> Document:
        """Write the child batch that replaces this batch's conflicts, and save each conflict's action."""
        if self.kick is None:
            raise ValueError("the driver needs a kick callable to replace conflicts (Runtime passes one)")
        data = record.data
        plan = replace.plan(self.store, data, conflicts, deadline)
        if plan.members:
            created = readmit.create_child(self.store, self.kick, data, plan.batch, plan.members, readmit.REPLACE,
                                           {"replaceInstances": plan.instances}, self.clock)
            log.info("conflicting files will replace the stored instances", rule=data["rule"], batch=data["batch"],
                     replacedBy=plan.batch, files=len(plan.members), created=created)
        failures = [f.with_action(plan.actions[f.id]) if f.id in plan.actions else f
                    for f in failures_from_record(data.get("failures"))]
        return self._save_failures(record, path, failures)

    def _save_failures(self, record: Document, path: str, failures: list[Failure]) -> Document:
        data = {**record.data, "failures": [f.to_record() for f in failures]}
        return Document(data, self.store.replace(path, data, record.generation))

    def _conclude_failures(self, record: Document, path: str, worker: str) -> Document:
        data = record.data
        operation = Operation.from_record(data["operationResult"])
        outcome = outcome_of(operation)
        named_all = data.get("failuresIncomplete") is None
        return self._conclude(record, path, worker, outcome=outcome, operation=operation,
                              hint=operation_hint(outcome, operation, self.store.bucket, named_all))

    def _conclude(self, record: Document, path: str, worker: str, *, outcome: str, operation: Operation | None = None,
                  error: dict[str, Any] | None = None, hint: str | None = None) -> Document:
        data = record.data
        failures = failures_from_record(data.get("failures"))
        message, attributes = import_message(
            data, outcome=outcome, names=self.config.names,
            manifest_uri=f"gs://{self.store.bucket}/{path}", operation=operation, error=error, hint=hint,
            concluded_at=self.clock(), failures=failures, failures_incomplete=data.get("failuresIncomplete"),
            failures_manifest=f"gs://{self.store.bucket}/{layout.failures_manifest_path(data['rule'], data['batch'])}")
        return self.reporter.conclude(record, path, message, attributes, worker)

    def _write_failure_files(self, data: dict[str, Any]) -> None:
        """Before publishing a result with failures: its NDJSON manifest (over 100 named) and its index entry.

        The index also lists a batch that failed as a whole (refused, or nothing named), for
        ``failures`` and ``retry``. Both are written from the frozen record, so every delivery
        writes the same bytes.
        """
        rule, batch = data["rule"], data["batch"]
        failures = failures_from_record(data.get("failures"))
        if len(failures) > MAX_LISTED_FAILURES:
            names = self.config.names
            self.store.write_text(layout.failures_manifest_path(rule, batch),
                                  "".join(json.dumps(f.shown(names), separators=(",", ":")) + "\n" for f in failures))
        entry = history.index_entry(data)
        if entry is not None:
            self.store.write_marker(layout.failed_index_path(rule, batch), entry)

    def _clean_staging(self, rule: str, batch: str) -> None:
        """Delete the batch's staging copies, membership markers and operation notes (its record stays, as the manifest)."""
        prefixes = (layout.staging_prefix(rule, batch), layout.member_prefix(rule, batch),
                    layout.operation_prefix(rule, batch))
        names = [item.name for prefix in prefixes for item in self.store.list(prefix)]
        if names:
            with ThreadPoolExecutor(max_workers=min(COPY_THREADS, len(names))) as pool:
                list(pool.map(self.store.delete, names))


def _without_skipped(data: dict[str, Any], skipped: list[dict[str, Any]]) -> dict[str, Any]:
    """``data`` with the members that cannot be copied (each with its ``reason``) moved to ``skipped``."""
    if not skipped:
        return data
    gone = [member for member in skipped if member["reason"] == GONE]
    if gone:
        log.warning("objects deleted or overwritten before import: skipped", rule=data["rule"], batch=data["batch"],
                    skipped=len(gone))
    if len(gone) < len(skipped):
        log.warning("objects Cloud Storage refuses to copy: skipped", rule=data["rule"], batch=data["batch"],
                    skipped=len(skipped) - len(gone),
                    reasons=sorted({member["reason"] for member in skipped if member["reason"] != GONE}))
    skipped_ids = {member["id"] for member in skipped}
    return {**data, "members": [m for m in data["members"] if m["id"] not in skipped_ids],
            "skipped": [*(data.get("skipped") or []), *skipped]}


def _member(listed: Listed) -> dict[str, str]:
    """A batch member as its membership marker records it."""
    return {"id": listed.name.rsplit("/", 1)[-1],
            "bucket": listed.metadata.get("source-bucket", ""),
            "name": listed.metadata.get("source-name", ""),
            "generation": listed.metadata.get("source-generation", "")}


def _needs_action(rule: Rule, failures: list[Failure]) -> bool:
    """Whether the rule asks for more than naming the failures in the result."""
    if failures and rule.on_failure.action != REPORT:
        return True
    return rule.on_conflict == REPLACE and any(f.kind == CONFLICT for f in failures)


def _bucket_and_name(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len("gs://"):].partition("/")
    return bucket, name
