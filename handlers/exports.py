"""Exporting DICOM instances to Cloud Storage, optionally filtered by study/series/instance.

An :class:`ExportRequest` is validated before any call (UIDs, destination, MIME
type, filter lines). :class:`ExportJob` refuses paths that name nothing in the
store (one QIDO search each, before anything is written), writes the filter file to the state
bucket, calls ``dicomStores.export`` with ``filterConfig.resourcePathsGcsUri``,
follows the operation and publishes one ``dicom-export-result/v1`` message.
Its record (``exports/REQUEST_ID.json``) makes a redelivered request resume
instead of exporting twice.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from handlers import log
from handlers.batches import DONE, PUBLISHING
from handlers.healthcare import ApiError, HealthcareApi, Operation
from handlers.reporting import ABANDONED_AFTER_SECONDS, Reporter, new_worker
from handlers.results import REJECTED, UNKNOWN, outcome_of, rfc3339
from handlers.retry import Deadline, RetryLater
from handlers.state import Conflict, Document, StateStore
from handlers.wildcard import WILDCARD_CHARS, WildcardError, split_gcs_uri

EXPORT_SCHEMA = "dicom-export-result/v1"
DEFAULT_MIME_TYPE = "application/dicom; transfer-syntax=*"
STARTING, RUNNING = "starting", "running"
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")
_PATH_RE = re.compile(r"/studies/([^/]+)(?:/series/([^/]+)(?:/instances/([^/]+))?)?")
_MIME_RE = re.compile(
    r"(application/dicom|application/octet-stream)(; ?transfer-syntax=(\*|[0-9]+(\.[0-9]+)*))?"
    r"|image/jpeg(; ?transfer-syntax=1\.2\.840\.10008\.1\.2\.4\.50)?"
    r"|image/png"
)
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Filter paths checked for existence (one QIDO search each) before an export starts.
MAX_CHECKED_PATHS = 100


class ExportRequestError(ValueError):
    """A request refused before any call: the message names the field and the fix."""


def check_uid(uid: str, what: str) -> str:
    """A DICOM UID: digits and dots, at most 64 characters (leading zeros tolerated, as found in real data)."""
    if not isinstance(uid, str) or len(uid) > 64 or not _UID_RE.fullmatch(uid):
        raise ExportRequestError(f"{what} {uid!r} is not a DICOM UID: digits separated by dots, at most 64 characters")
    return uid


def resource_path(study: str, series: str | None = None, instance: str | None = None) -> str:
    path = f"/studies/{check_uid(study, 'study UID')}"
    if series is not None:
        path += f"/series/{check_uid(series, 'series UID')}"
    if instance is not None:
        path += f"/instances/{check_uid(instance, 'instance UID')}"
    return path


def parse_filter_lines(text: str, source: str) -> list[str]:
    """Filter-file lines (``\\n`` or ``\\r\\n``, blanks ignored), each checked; errors name ``source:LINE``."""
    paths = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        found = _PATH_RE.fullmatch(line)
        if found is None:
            raise ExportRequestError(
                f"{source}:{number}: {line!r} is not /studies/STUDY_UID[/series/SERIES_UID[/instances/INSTANCE_UID]]")
        try:
            paths.append(resource_path(*[part for part in found.groups() if part is not None]))
        except ExportRequestError as exc:
            raise ExportRequestError(f"{source}:{number}: {exc}") from None
    return paths


@dataclass(frozen=True)
class ExportRequest:
    store: str
    destination: str
    paths: tuple[str, ...] = ()
    mime_type: str = DEFAULT_MIME_TYPE
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def build(cls, *, store: str, destination: str, studies: Iterable[str] = (), series: Iterable[str] = (),
              instances: Iterable[str] = (), filter_lines: Iterable[str] = (), mime_type: str | None = None,
              request_id: str | None = None) -> "ExportRequest":
        """Validate every part; ``series`` are ``STUDY/SERIES``, ``instances`` ``STUDY/SERIES/INSTANCE``."""
        paths = [resource_path(uid) for uid in studies]
        paths += [resource_path(*_split(item, 2, "--series", "STUDY_UID/SERIES_UID")) for item in series]
        paths += [resource_path(*_split(item, 3, "--instance", "STUDY_UID/SERIES_UID/INSTANCE_UID")) for item in instances]
        paths += list(filter_lines)
        _check_destination(destination)
        mime = mime_type or DEFAULT_MIME_TYPE
        if not _MIME_RE.fullmatch(mime):
            raise ExportRequestError(
                f"MIME type {mime!r} is not one the API exports: use {DEFAULT_MIME_TYPE!r}, "
                "'application/dicom; transfer-syntax=1.2.840.10008.1.2.1', 'application/octet-stream; transfer-syntax=*', "
                "'image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50' or 'image/png'")
        rid = request_id or uuid.uuid4().hex
        if not REQUEST_ID_RE.fullmatch(rid):
            raise ExportRequestError(f"requestId {rid!r} must be 1-128 letters, digits, '.', '_' or '-'")
        return cls(store, destination, tuple(dict.fromkeys(paths)), mime, rid)

    @property
    def filter_text(self) -> str:
        return "".join(f"{path}\n" for path in self.paths)

    def summary(self) -> dict[str, int]:
        counts = {"studies": 0, "series": 0, "instances": 0}
        for path in self.paths:
            depth = path.count("/") // 2
            counts[("studies", "series", "instances")[depth - 1]] += 1
        return counts


def check_paths_exist(api: HealthcareApi, request: ExportRequest, deadline: Deadline) -> None:
    """Refuse a request whose paths (the first :data:`MAX_CHECKED_PATHS`) name nothing in the store.

    One QIDO search per path. Raises :class:`ExportRequestError` listing the missing
    paths, or RetryLater when the API cannot answer yet.
    """
    missing = []
    for path in request.paths[:MAX_CHECKED_PATHS]:
        study, series, instance = _PATH_RE.fullmatch(path).groups()  # type: ignore[union-attr]
        if instance is not None:
            resource, key, uid = f"studies/{study}/series/{series}/instances", "SOPInstanceUID", instance
        elif series is not None:
            resource, key, uid = f"studies/{study}/series", "SeriesInstanceUID", series
        else:
            resource, key, uid = "studies", "StudyInstanceUID", study
        try:
            found = api.search_dicom(request.store, resource, {key: uid, "limit": "1"}, deadline)
        except ApiError as exc:
            if exc.retryable:
                raise RetryLater(f"cannot search {request.store} for the filter paths yet: {exc}") from None
            raise ExportRequestError(f"cannot search DICOM store {request.store} for the filter paths: {exc}") from None
        if not found:
            missing.append(path)
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ExportRequestError(f"not in DICOM store {request.store}: {shown}: check the UIDs (a QIDO search found nothing)")


def _split(item: str, parts: int, flag: str, form: str) -> list[str]:
    pieces = item.split("/") if isinstance(item, str) else []
    if len(pieces) != parts:
        raise ExportRequestError(f"{flag} {item!r} must be {form}")
    return pieces


def _check_destination(destination: str) -> None:
    try:
        bucket, path = split_gcs_uri(destination if "/" in destination[5:] else destination + "/")
    except WildcardError as exc:
        raise ExportRequestError(f"destination: {exc}") from None
    if any(char in WILDCARD_CHARS for char in path):
        raise ExportRequestError(f"destination {destination!r} has a wildcard: give a folder such as gs://{bucket}/exports")


def request_from_message(body: Any, stores: Mapping[str, str], default_id: str) -> ExportRequest:
    """An export request from a Pub/Sub message body (same options as the CLI)."""
    if not isinstance(body, dict):
        raise ExportRequestError("the export request must be a JSON object with 'store' and 'destination'")
    known = {"store", "destination", "studies", "series", "instances", "filterLines", "mimeType", "requestId"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ExportRequestError(f"unknown field(s) {', '.join(unknown)}: known fields are {', '.join(sorted(known))}")
    for key in ("store", "destination"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise ExportRequestError(f"'{key}' is required and must be a string")
    lists = {}
    for key in ("studies", "series", "instances", "filterLines"):
        value = body.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ExportRequestError(f"'{key}' must be a list of strings")
        lists[key] = value
    filter_lines = parse_filter_lines("\n".join(lists["filterLines"]), "filterLines")
    return ExportRequest.build(
        store=resolve_store(body["store"], stores), destination=body["destination"], studies=lists["studies"],
        series=lists["series"], instances=lists["instances"], filter_lines=filter_lines,
        mime_type=body.get("mimeType"), request_id=body.get("requestId") or default_id)


def resolve_store(store: str, stores: Mapping[str, str]) -> str:
    """A config alias or a full store name."""
    if store in stores:
        return stores[store]
    if re.fullmatch(r"projects/[^/]+/locations/[^/]+/datasets/[^/]+/dicomStores/[^/]+", store):
        return store
    known = ", ".join(sorted(stores)) or "none"
    raise ExportRequestError(f"store {store!r} is neither an alias from config.yaml (known: {known}) nor a full "
                             "store name projects/P/locations/L/datasets/D/dicomStores/S")


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
        "filter": {"uri": record.get("filterUri"), **request.summary()} if request.paths else None,
        "operation": operation.name if operation else record.get("operation"),
        "counter": {"success": success, "failure": failure},
        "error": dict(error or (operation.error if operation and operation.error else {})) or None,
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

    def record_path(self, request: ExportRequest) -> str:
        return f"exports/{request.request_id}.json"

    def run(self, request: ExportRequest, deadline: Deadline) -> dict[str, Any]:
        """The published result message; RetryLater when the budget ends first.

        A new request is first checked with :func:`check_paths_exist` (ExportRequestError
        when it names something the store does not hold); a resumed one is not checked again.
        """
        path = self.record_path(request)
        worker = new_worker()
        record = self.store.read(path) or self._start(request, path, deadline)
        while True:
            state = record.data["state"]
            if state == DONE:
                return record.data["result"]
            if deadline.expired:
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
                record = self.store.read(path) or record

    def _start(self, request: ExportRequest, path: str, deadline: Deadline) -> Document:
        check_paths_exist(self.api, request, deadline)
        filter_uri = None
        if request.paths:
            filter_path = f"exports/{request.request_id}.filter.txt"
            self.store.write_text(filter_path, request.filter_text)
            filter_uri = f"gs://{self.store.bucket}/{filter_path}"
        data = {"state": STARTING, "requestId": request.request_id, "store": request.store,
                "destination": request.destination, "mimeType": request.mime_type, "filterUri": filter_uri,
                "requestedAt": self.clock(), "operation": None, "callStartedAt": None}
        try:
            return Document(data, self.store.create(path, data))
        except Conflict:
            return self.store.read(path)  # type: ignore[return-value]

    def _call(self, request: ExportRequest, record: Document, path: str, deadline: Deadline,
              worker: str) -> Document:
        started = record.data.get("callStartedAt")
        if started and self.clock() - started < ABANDONED_AFTER_SECONDS:
            raise RetryLater(f"another worker is starting export {request.request_id}")
        claimed = {**record.data, "callStartedAt": self.clock()}
        generation = self.store.replace(path, claimed, record.generation)
        body: dict[str, Any] = {"gcsDestination": {"uriPrefix": request.destination, "mimeType": request.mime_type}}
        if claimed["filterUri"]:
            body["filterConfig"] = {"resourcePathsGcsUri": claimed["filterUri"]}
        try:
            operation = self.api.export_dicom(request.store, body, deadline)
        except ApiError as exc:
            if exc.retryable:
                self.store.replace(path, {**claimed, "callStartedAt": None, "lastError": str(exc)}, generation)
                raise RetryLater(f"export call not accepted yet: {exc}") from None
            return self._conclude(worker, request, Document(claimed, generation), path, REJECTED, None,
                                  {"code": exc.code, "status": exc.status, "message": exc.message},
                                  export_hint(exc.code, request, self.store.bucket))
        running = {**claimed, "state": RUNNING, "operation": operation.name}
        log.info("export started", operation=operation.name, requestId=request.request_id, paths=len(request.paths))
        return Document(running, self.store.replace(path, running, generation))

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

    def reject(self, request_id: str, store: str | None, destination: str | None, reason: str) -> dict[str, Any]:
        """Report a request refused before any call (once, even if the message is redelivered)."""
        path = f"exports/{request_id}.json"
        worker = new_worker()
        record = self.store.read(path)
        if record is None:
            data = {"state": STARTING, "requestId": request_id, "requestedAt": self.clock()}
            try:
                record = Document(data, self.store.create(path, data))
            except Conflict:
                record = self.store.read(path)
        while record is not None and record.data["state"] != DONE:
            try:
                if record.data["state"] == STARTING:
                    message, attributes = rejection_message(request_id, store, destination, reason, self.clock())
                    record = self.reporter.conclude(record, path, message, attributes, worker)
                else:
                    record = self.reporter.publish(record, path, worker)
            except Conflict:
                record = self.store.read(path)
        return record.data["result"] if record else {}


def rejection_message(request_id: str, store: str | None, destination: str | None, reason: str,
                      concluded_at: float) -> tuple[dict, dict]:
    data = {
        "schema": EXPORT_SCHEMA, "outcome": REJECTED, "requestId": request_id, "store": store,
        "destination": destination, "mimeType": None, "filter": None, "operation": None,
        "counter": {"success": 0, "failure": 0},
        "error": {"code": 400, "status": "INVALID_ARGUMENT", "message": reason},
        "hint": "fix the request and send it again", "logsUrl": None,
        "timings": {"requestedAt": None, "operationCreateTime": None, "operationEndTime": None,
                    "concludedAt": rfc3339(concluded_at)},
    }
    attributes = {"schema": EXPORT_SCHEMA, "outcome": REJECTED, "failureCount": "0", "successCount": "0",
                  "store": store or "", "requestId": request_id}
    return data, attributes
