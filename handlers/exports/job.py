"""Exporting DICOM instances to Cloud Storage, optionally filtered by study/series/instance.

:class:`ExportJob` runs a validated :class:`handlers.exports.request.ExportRequest`:
it refuses paths that name nothing in the store (before anything is written),
writes the filter file to the state bucket, calls ``dicomStores.export`` with ``filterConfig.resourcePathsGcsUri``,
follows the operation and publishes one ``dicom-export-result/v1`` message.
Its record (``exports/REQUEST_ID.json``) makes a redelivered request resume
instead of exporting twice. Like an import batch's record (docs/design.md, "Claim
and note, not rewrite"), it is created with the call already claimed and the
operation is noted in a new object beside it (``exports/REQUEST_ID.operation.WORKER.json``),
so the record's next write is the result: Cloud Storage's one write per second
per name costs the result one second, not three.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from handlers import log
from handlers.batch.layout import DONE, PUBLISHING
from handlers.batch.reporting import ABANDONED_AFTER_SECONDS, Reporter, new_worker
from handlers.batch.results import REJECTED, UNKNOWN, outcome_of, rfc3339
from handlers.clients.healthcare import ApiError, HealthcareApi, Operation
from handlers.clients.storage import Conflict, Document, StateStore, create_if_absent, create_or_replace
from handlers.exports.query import CAP_RULE, Found, OnPage, Query, SearchPaused, search_paths
from handlers.exports.request import (
    ExportRequest,
    ExportRequestError,
    RefusedMessage,
    check_destination,
    check_paths_exist,
    count_levels,
    filter_text,
)
from handlers.retry import Deadline, RetryLater

EXPORT_SCHEMA = "dicom-export-result/v1"
STARTING, RUNNING = "starting", "running"


def search_progress_path(request: ExportRequest) -> str:
    """Where ``request``'s search saves what it found when a delivery's budget ends first (:meth:`ExportJob._search`):
    named by its arguments too, like :func:`filter_path`, so requests reusing the id with other queries (all
    searching until one creates the record) neither overwrite nor delete each other's progress."""
    return f"exports/{request.request_id}.{request.tag}.search.json"


def filter_path(request: ExportRequest) -> str:
    """Where ``request``'s filter file is written: named by its arguments too, so a request reusing the id with
    other arguments (refused once it finds the id's record) never overwrites the file a running export reads."""
    return f"exports/{request.request_id}.{request.tag}.filter.txt"


def conflict_path(request_id: str, tag: str) -> str:
    """Where the refusal of a request reusing ``request_id`` with other arguments (its ``tag``) is recorded."""
    return f"exports/{request_id}.conflict.{tag}.json"


def operation_note_path(request_id: str, worker: str) -> str:
    """Where ``worker`` notes the export operation it started (a new name: no wait on the record's last write)."""
    return f"exports/{request_id}.operation.{worker}.json"


def export_message(request: ExportRequest, record: Mapping[str, Any], *, outcome: str, operation: Operation | None,
                   error: Mapping[str, Any] | None, hint: str | None, concluded_at: float) -> tuple[dict, dict]:
    success = operation.success if operation else 0
    failure = operation.failure if operation else 0
    data = {
        "schema": EXPORT_SCHEMA,
        "outcome": outcome,
        "requestId": request.request_id,
        "store": request.store,
        "destination": request.destination,
        "mimeType": request.mime_type,
        "filter": _filter(request, record),
        "operation": operation.name if operation else record.get("operation"),
        "counter": {"success": success, "failure": failure},
        "error": dict(error or (operation.error if operation and operation.error else {})) or None,
        "requestIdConflict": None,
        "hint": hint,
        "logsUrl": operation.logs_url if operation and operation.logs_url else None,
        "timings": {
            "requestedAt": rfc3339(record.get("requestedAt")),
            "operationCreateTime": (operation.create_time or None) if operation else None,
            "operationEndTime": (operation.end_time or None) if operation else None,
            "concludedAt": rfc3339(concluded_at),
        },
    }
    attributes = {"schema": EXPORT_SCHEMA, "outcome": outcome, "failureCount": str(failure),
                  "successCount": str(success), "store": request.store, "requestId": request.request_id}
    return data, attributes


def _filter(request: ExportRequest, record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The result's ``filter``: the file, what its paths name, and the query that found them."""
    if "filter" in record:
        return record["filter"]
    # A record started before the filter summary was recorded.
    return {"uri": record.get("filterUri"), **count_levels(request.paths), "query": None} if request.paths else None


def export_hint(code: int | None, request: ExportRequest, state_bucket: str) -> str | None:
    if code in (401, 403, 7):
        bucket = request.destination[5:].split("/", 1)[0]
        return (f"grant roles/storage.objectAdmin on gs://{bucket} and roles/storage.objectViewer on gs://{state_bucket} "
                "(the filter file) to service-PROJECT_NUMBER@gcp-sa-healthcare.iam.gserviceaccount.com")
    if code in (404, 5):
        return f"the DICOM store {request.store} does not exist or is not visible: check the store name"
    return None


@dataclass
class ExportJob:
    """Runs one export request to its published result; every call resumes from the record."""

    store: StateStore
    api: HealthcareApi
    reporter: Reporter
    clock: Callable[[], float] = time.time
    deadline_hours: float = 24.0
    #: ``exports.destinations``: the only folders an export may be written to (none: every export is refused).
    destinations: tuple[str, ...] = ()
    config_path: str = "config.yaml"
    #: ``exports.max_query_results``: a query matching more is refused.
    max_query_results: int = 10_000
    #: ``results.object_names: hashed``: results, logs and errors show no value of a query, not only the patient's.
    hashed_names: bool = False

    def record_path(self, request: ExportRequest) -> str:
        return f"exports/{request.request_id}.json"

    def run(self, request: ExportRequest, deadline: Deadline, *, page_size: int | None = None,
            on_page: OnPage | None = None) -> dict[str, Any]:
        """The published result message; RetryLater when the budget ends first.

        An id refused before (its record made by :meth:`reject`) keeps that result: ExportRequestError saying
        to use a new id. Until its export call is made, a request is checked against ``destinations``
        (ExportRequestError naming the rule). A new one then has its query searched
        (``page_size`` results a page, ``on_page`` after each) or its paths checked with
        :func:`check_paths_exist` (ExportRequestError when they name nothing in the store).
        """
        path = self.record_path(request)
        worker = new_worker()
        record = self._with_noted_operation(self.store.read(path))
        if record is not None and record.data.get("refused"):
            refusal = record.data["result"]["error"]["message"]
            raise ExportRequestError(f"requestId {request.request_id} was refused before ({refusal}) and keeps that "
                                     "REJECTED result: send the request again with a new requestId")
        if record is not None:  # first: another request's refusal must not be taken for this export's (reject())
            check_same_request(request, record.data)
        if record is None or record.data["state"] == STARTING:
            check_destination(request.destination, self.destinations, self.config_path)
        record = record or self._start(request, path, deadline, page_size, on_page, worker)
        return self._advance(request, record, path, deadline, worker)

    def _advance(self, request: ExportRequest, record: Document, path: str, deadline: Deadline,
                 worker: str) -> dict[str, Any]:
        """Move ``record`` on (call, follow, publish) until its result is published; RetryLater when out of time."""
        while True:
            state = record.data["state"]
            if state == DONE:
                return record.data["result"]
            if deadline.expired:
                if state == STARTING and record.data.get("callBy") == worker:
                    self._release(record, path, "the delivery's budget ended before the export call")
                raise RetryLater(f"export {request.request_id} is {state}; continuing on the next delivery")
            try:
                if state == STARTING:
                    record = self._call(request, record, path, deadline, worker)
                elif state == RUNNING:
                    record = self._follow(request, record, path, deadline, worker)
                elif state == PUBLISHING:
                    record = self.reporter.publish(record, path, worker)
                else:
                    raise ValueError(f"export record {path} has unknown state {state!r}")
            except Conflict:
                record = self._with_noted_operation(self.store.read(path)) or record

    def _with_noted_operation(self, record: Document | None) -> Document | None:
        """``record`` as ``running`` when the worker that claimed its call noted the operation it started."""
        if record is None or record.data["state"] != STARTING or not record.data.get("callBy"):
            return record
        note = self.store.read(operation_note_path(record.data["requestId"], record.data["callBy"]))
        if note is None:
            return record
        return Document({**record.data, "state": RUNNING, "operation": note.data["operation"]}, record.generation)

    def _start(self, request: ExportRequest, path: str, deadline: Deadline, page_size: int | None,
               on_page: OnPage | None, worker: str) -> Document:
        """Search or check the paths, write the filter file, and create the record with the call claimed by ``worker``.

        A query's saved search progress is deleted once the record exists (it and the filter
        file hold what the search found) or once the query is refused: no delivery resumes it then.
        """
        paths, query = request.paths, None
        if request.query is not None:
            try:
                paths, query = self._searched(request, request.query, deadline, page_size, on_page)
            except ExportRequestError:
                self.store.delete(search_progress_path(request))
                raise
        else:
            check_paths_exist(self.api, request, deadline)
        filter_uri = summary = None
        if paths:
            self.store.write_text(filter_path(request), filter_text(paths))
            filter_uri = f"gs://{self.store.bucket}/{filter_path(request)}"
            summary = {"uri": filter_uri, **count_levels(paths), "query": query}
        data = {"state": STARTING, "requestId": request.request_id, "fingerprint": request.fingerprint,
                "store": request.store, "destination": request.destination, "mimeType": request.mime_type,
                "filterUri": filter_uri,
                "filter": summary, "requestedAt": self.clock(), "operation": None, "callStartedAt": self.clock(),
                "callBy": worker}
        record: Document | None
        try:
            record = Document(data, self.store.create(path, data))
        except Conflict:  # another delivery created it meanwhile, maybe for other arguments
            record = self.store.read(path)
            try:
                check_same_request(request, record.data)  # type: ignore[union-attr]
            except RequestIdConflict:
                if filter_uri:
                    self.store.delete(filter_path(request))  # no export will read it
                raise
        if request.query is not None:
            self.store.delete(search_progress_path(request))
        return record  # type: ignore[return-value]

    def _searched(self, request: ExportRequest, query: Query, deadline: Deadline, page_size: int | None,
                  on_page: OnPage | None) -> tuple[tuple[str, ...], dict[str, Any]]:
        """The paths ``query`` finds and the result's ``filter.query``; ExportRequestError when it finds none."""
        found = self._search(request, query, deadline, page_size, on_page)
        shown = query.shown(self.hashed_names)
        if not found.paths:
            raise ExportRequestError(f"the query {shown!r} matches no {query.level} in "
                                     f"{request.store}: check its values (dates as YYYYMMDD), nothing was exported")
        return found.paths, {"where": shown, "level": query.level, "matches": len(found.paths), "pages": found.pages}

    def _search(self, request: ExportRequest, query: Query, deadline: Deadline, page_size: int | None,
                on_page: OnPage | None) -> Found:
        """Search ``query`` from where an earlier delivery stopped (:func:`search_progress_path`).

        A search longer than one delivery's budget saves what it found before RetryLater, so every
        delivery adds pages instead of starting again at offset 0 (and never finishing).
        """
        path = search_progress_path(request)
        searched = {"store": request.store, "where": query.where, "level": query.level}
        saved = self.store.read(path)
        resume = None
        if saved is not None and all(saved.data.get(key) == value for key, value in searched.items()):
            resume = Found(tuple(saved.data["paths"]), saved.data["pages"])
        try:
            return search_paths(self.api, request.store, query, cap=self.max_query_results, deadline=deadline,
                                page_size=page_size, on_page=on_page, resume=resume,
                                every_value_hidden=self.hashed_names, config_path=self.config_path)
        except SearchPaused as paused:
            progress = {**searched, "paths": list(paused.found.paths), "pages": paused.found.pages}
            try:
                create_or_replace(self.store, path, progress, saved)
            except Conflict:
                pass  # another delivery saved its progress meanwhile: the next one resumes from that
            raise

    def _call(self, request: ExportRequest, record: Document, path: str, deadline: Deadline,
              worker: str) -> Document:
        """Call export under ``worker``'s claim (taken with one write unless the record was created with it).

        The operation is noted beside the record, which is not written: its next
        write is the result. A refusal that may succeed later releases the claim.
        """
        data = record.data
        if data.get("callBy") != worker:
            if self._call_claimed(data):
                raise RetryLater(f"another worker is starting export {request.request_id}")
            data = {**data, "callStartedAt": self.clock(), "callBy": worker}
            record = Document(data, self.store.replace(path, data, record.generation))
        body: dict[str, Any] = {"gcsDestination": {"uriPrefix": request.destination, "mimeType": request.mime_type}}
        if data["filterUri"]:
            body["filterConfig"] = {"resourcePathsGcsUri": data["filterUri"]}
        try:
            operation = self.api.export_dicom(request.store, body, deadline)
        except ApiError as exc:
            if exc.retryable:
                self._release(record, path, str(exc))
                raise RetryLater(f"export call not accepted yet: {exc}") from None
            return self._conclude(worker, request, record, path, REJECTED, None,
                                  {"code": exc.code, "status": exc.status, "message": exc.message},
                                  export_hint(exc.code, request, self.store.bucket))
        # absent unless this worker's own retried call noted it (the name is this worker's)
        create_if_absent(self.store, operation_note_path(request.request_id, worker),
                         {"operation": operation.name, "startedAt": self.clock()})
        counts = data.get("filter") or {}
        log.info("export started", operation=operation.name, requestId=request.request_id,
                 paths=sum(counts.get(level, 0) for level in ("studies", "series", "instances")))
        return Document({**data, "state": RUNNING, "operation": operation.name}, record.generation)

    def _call_claimed(self, data: Mapping[str, Any]) -> bool:
        """Whether a worker claimed the export call less than ABANDONED_AFTER_SECONDS ago (it may be calling now)."""
        started = data.get("callStartedAt")
        return bool(data.get("callBy")) and bool(started) and self.clock() - started < ABANDONED_AFTER_SECONDS

    def _release(self, record: Document, path: str, reason: str) -> None:
        """Give up the call's claim, so the next delivery calls at once instead of waiting for it to expire."""
        try:
            self.store.replace(path, {**record.data, "callStartedAt": None, "callBy": None, "lastError": reason},
                               record.generation)
        except Conflict:
            pass  # the record moved on under another worker: there is no claim of ours left to give up

    def _follow(self, request: ExportRequest, record: Document, path: str, deadline: Deadline,
                worker: str) -> Document:
        if self.clock() > record.data["requestedAt"] + self.deadline_hours * 3600:
            return self._conclude(worker, request, record, path, UNKNOWN, None, {
                "code": 4, "status": "DEADLINE_EXCEEDED",
                "message": f"operation not done after {self.deadline_hours:g} h: no longer followed"}, None)
        try:
            operation = self.api.wait(record.data["operation"], deadline)
        except ApiError as exc:
            if exc.retryable:
                raise RetryLater(f"operation {record.data['operation']} not readable yet: {exc}") from None
            return self._conclude(worker, request, record, path, UNKNOWN, None,
                                  {"code": exc.code, "status": exc.status, "message": exc.message}, None)
        if not operation.done:
            raise RetryLater(f"export operation {operation.name} still running")
        outcome = outcome_of(operation)
        hint = export_hint((operation.error or {}).get("code"), request, self.store.bucket)
        return self._conclude(worker, request, record, path, outcome, operation, None, hint)

    def _conclude(self, worker: str, request: ExportRequest, record: Document, path: str, outcome: str,
                  operation: Operation | None, error: Mapping[str, Any] | None, hint: str | None) -> Document:
        message, attributes = export_message(request, record.data, outcome=outcome, operation=operation, error=error,
                                             hint=hint, concluded_at=self.clock())
        return self.reporter.conclude(record, path, message, attributes, worker)

    def reject(self, request_id: str, store: str | None, destination: str | None, reason: str, deadline: Deadline,
               rule: str | None = None, conflict: str | None = None,
               refused: RefusedMessage | None = None) -> dict[str, Any]:
        """Report a request refused before any call (once, even if the message is redelivered).

        ``rule``: the config rule that refused it (``exports.destinations``, ``stores``), None for a malformed request.
        ``conflict``: a :class:`RequestIdConflict`'s ``tag``. Its refusal is recorded at :func:`conflict_path`, not
        in the id's record (which names another export), and says ``requestIdConflict``: it is not that export's result.
        ``refused``: the refused message; one that does not ask for the export its id's record names
        (:meth:`RefusedMessage.asks_for`: refused for another reason, with other arguments) is such a conflict too,
        tagged :attr:`RefusedMessage.tag`, so it neither ends that export nor follows it.
        The id is the export's: an export whose call was made (its operation noted, or its call claimed less than
        ABANDONED_AFTER_SECONDS ago) is followed to its own result instead (RetryLater until it ends), and an id that
        already has a result keeps it; only a new id, or one whose call was never made, is concluded REJECTED. A new
        id's record is created with the REJECTED result in it (and ``refused``), so a valid request reusing the id,
        meanwhile or later, never calls export: :meth:`run` refuses it, telling it to use a new id.
        """
        path = conflict_path(request_id, conflict) if conflict else f"exports/{request_id}.json"
        worker = new_worker()
        while True:
            record = self._with_noted_operation(self.store.read(path))
            if record is not None and conflict is None and refused is not None and not refused.asks_for(record.data):
                conflict = refused.tag
                path = conflict_path(request_id, conflict)
                log.warning("refused export request reuses the id of another export: recorded as a conflict",
                            requestId=request_id, requestIdConflict=conflict)
                continue
            if record is not None:
                break
            # Created with its result frozen: a record of this id is never STARTING without a request to call.
            message, attributes = rejection_message(request_id, store, destination, reason, self.clock(),
                                                    rule, conflict, self.config_path)
            data = self.reporter.frozen({"requestId": request_id, "requestedAt": self.clock(), "refused": True},
                                        message, attributes, worker)
            try:
                record = Document(data, self.store.create(path, data))
                break
            except Conflict:
                continue  # another delivery created it meanwhile: read what it is
        if record.data["state"] == DONE:
            log.info("refused export request: its requestId already has a result, which is not published again",
                     requestId=request_id, outcome=record.data["result"]["outcome"])
        while record is not None and record.data["state"] != DONE:
            state = record.data["state"]
            try:
                if state == RUNNING or (state == STARTING and self._call_claimed(record.data)):
                    return self._follow_instead(record, deadline)
                if state == STARTING:
                    message, attributes = rejection_message(request_id, store, destination, reason, self.clock(),
                                                            rule, conflict, self.config_path)
                    record = self.reporter.conclude(record, path, message, attributes, worker)
                else:
                    record = self.reporter.publish(record, path, worker)
            except Conflict:
                record = self._with_noted_operation(self.store.read(path))
        return record.data["result"] if record else {}

    def _follow_instead(self, record: Document, deadline: Deadline) -> dict[str, Any]:
        """A refused request whose id is a running export's: that export's result, not a REJECTED one of its own.

        The refused message may be the export's own, redelivered after config.yaml stopped allowing its store
        or destination: no other delivery would follow the export then.
        """
        data = record.data
        log.warning("refused export request reuses the id of a running export: following that export instead",
                    requestId=data["requestId"], operation=data.get("operation"))
        if data["state"] == STARTING:
            raise RetryLater(f"another worker is starting export {data['requestId']}")
        request = ExportRequest.build(store=data["store"], destination=data["destination"],
                                      mime_type=data["mimeType"], request_id=data["requestId"])
        return self._advance(request, record, self.record_path(request), deadline, new_worker())


class RequestIdConflict(ExportRequestError):
    """A ``requestId`` reused with other arguments; ``tag``: the refused request's (:attr:`ExportRequest.tag`)."""

    def __init__(self, message: str, tag: str) -> None:
        super().__init__(message)
        self.tag = tag


def check_same_request(request: ExportRequest, recorded: Mapping[str, Any]) -> None:
    """Refuse ``request`` (RequestIdConflict) when its id's record was made for other arguments.

    A record without a fingerprint (an export started by an earlier version, or a refusal) is not compared.
    """
    fingerprint = recorded.get("fingerprint")
    if fingerprint is None or fingerprint == request.fingerprint:
        return
    fields = (("store", "store", request.store), ("destination", "destination", request.destination),
              ("mimeType", "MIME type", request.mime_type))
    differs = [label for key, label, value in fields
               if str(recorded.get(key) or "").rstrip("/") != value.rstrip("/")] or ["UIDs, filter lines or query"]
    rid = request.request_id
    raise RequestIdConflict(
        f"requestId {rid} already names an export with other arguments (different {', '.join(differs)}): give this "
        "export a new requestId, or repeat that export's arguments to follow it", request.tag)


def rejection_message(request_id: str, store: str | None, destination: str | None, reason: str,
                      concluded_at: float, rule: str | None = None, conflict: str | None = None,
                      config_path: str = "config.yaml") -> tuple[dict, dict]:
    """A REJECTED result; ``conflict``: the tag of a request refused for reusing an export's id (RequestIdConflict)."""
    if rule is None:
        error: dict[str, Any] = {"code": 400, "status": "INVALID_ARGUMENT", "message": reason}
        hint = f"fix the request and send it again with a new requestId ({request_id} keeps this result)"
    elif rule == CAP_RULE:
        error = {"code": 400, "status": "INVALID_ARGUMENT", "message": reason, "rule": rule}
        hint = (f"narrow the query, or have the operators raise {rule} in {config_path}, then send the request again "
                f"with a new requestId ({request_id} keeps this result)")
    else:
        error = {"code": 403, "status": "PERMISSION_DENIED", "message": reason, "rule": rule}
        hint = (f"refused by {rule} in {config_path}: request an allowed value, or have the operators change {rule}, "
                f"then send the request again with a new requestId ({request_id} keeps this result)")
    data = {
        "schema": EXPORT_SCHEMA, "outcome": REJECTED, "requestId": request_id, "store": store,
        "destination": destination, "mimeType": None, "filter": None, "operation": None,
        "counter": {"success": 0, "failure": 0},
        "error": error, "requestIdConflict": conflict,
        "hint": hint, "logsUrl": None,
        "timings": {"requestedAt": None, "operationCreateTime": None, "operationEndTime": None,
                    "concludedAt": rfc3339(concluded_at)},
    }
    attributes = {"schema": EXPORT_SCHEMA, "outcome": REJECTED, "failureCount": "0", "successCount": "0",
                  "store": store or "", "requestId": request_id}
    if conflict:
        attributes["requestIdConflict"] = conflict
    return data, attributes
