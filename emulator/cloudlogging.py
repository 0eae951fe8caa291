"""Cloud Logging's stand-in: the per-file errors of imports and exports as ``LogEntry`` objects.

An operation writes one entry per failed file (import) or instance (export),
shaped like the API's (see docs/emulator.md, "Cloud Logging"); ``entries.list``
(``POST /v2/entries:list``) serves them with the real request and response
shapes: ``resourceNames``, ``filter`` (emulator.logfilter), ``orderBy``,
``pageSize`` (default 50, at most 1000), ``pageToken`` -> ``entries``,
``nextPageToken``.

Two fault options of the writing method (``dicomStores.import`` or
``dicomStores.export``) make the real service's behaviour testable:
``logDelaySeconds`` (an entry is listed only that long after it was written,
as Logging ingests with a delay) and ``logSampleAbove`` (an operation writes at
most that many entries; the API writes "a limited number" past a threshold).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

from emulator.clock import rfc3339_now
from emulator.errors import invalid
from emulator.logfilter import FilterError, parse
from emulator.paging import page

PRODUCER = "healthcare.googleapis.com"
LOG_IDS = {"import": "healthcare.googleapis.com%2Fimport_dicom", "export": "healthcare.googleapis.com%2Fexport_dicom"}
PAYLOAD_TYPES = {
    "import": "type.googleapis.com/google.cloud.healthcare.logging.ImportDicomLogEntry",
    "export": "type.googleapis.com/google.cloud.healthcare.logging.ExportDicomLogEntry",
}
RESOURCE_TYPE = "healthcare_dicom_store"
DEFAULT_PAGE_SIZE = 50
ORDERS = ("timestamp asc", "timestamp desc")
MAX_KEPT = 100_000
_STORE = re.compile(r"projects/([^/]+)/locations/([^/]+)/datasets/([^/]+)/dicomStores/([^/]+)")
_PROJECT = re.compile(r"projects/[^/]+")
_REQUEST_FIELDS = {"resourceNames", "projectIds", "filter", "orderBy", "pageSize", "pageToken"}


@dataclass(frozen=True)
class _Kept:
    entry: dict[str, Any]
    project: str
    visible_at: float  # time.monotonic() from which entries.list returns it


def log_entry(kind: str, store: str, operation_name: str, operation_id_form: str, source: str, code: int,
              message: str, **payload: Any) -> dict[str, Any]:
    """One ``LogEntry`` for a failed file (``kind`` import) or instance (``kind`` export)."""
    project, location, dataset, store_id = _STORE.fullmatch(store).groups()  # type: ignore[union-attr]
    now = rfc3339_now()
    return {
        "insertId": secrets.token_hex(8),
        "logName": f"projects/{project}/logs/{LOG_IDS[kind]}",
        "resource": {"type": RESOURCE_TYPE, "labels": {
            "project_id": project, "location": location, "dataset_id": dataset, "dicom_store_id": store_id}},
        "timestamp": now,
        "receiveTimestamp": now,
        "severity": "ERROR",
        "operation": {"id": operation_name if operation_id_form == "name" else operation_name.rsplit("/", 1)[-1],
                      "producer": PRODUCER},
        "jsonPayload": {"@type": PAYLOAD_TYPES[kind], "source": source, **payload,
                        "error": {"code": code, "message": message}},
    }


class CloudLogging:
    """Entries in memory (thread-safe), with the ingestion delay and sampling of the writer's faults."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[_Kept] = []
        self._written: dict[str, int] = {}

    def write(self, entry: dict[str, Any], *, operation: str, delay_seconds: float | None,
              sample_above: int | None) -> bool:
        """Keep ``entry`` for ``operation``; False when sampling drops it."""
        with self._lock:
            count = self._written.get(operation, 0)
            if sample_above is not None and count >= sample_above:
                return False
            self._written[operation] = count + 1
            project = entry["logName"].split("/")[1]
            self._entries.append(_Kept(entry, project, time.monotonic() + (delay_seconds or 0.0)))
            if len(self._entries) > MAX_KEPT:
                del self._entries[: len(self._entries) - MAX_KEPT]
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._written.clear()

    def list(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``entries.list``: the response JSON, or ApiError 400 naming the request field at fault."""
        unknown = sorted(set(body) - _REQUEST_FIELDS)
        if unknown:
            raise invalid(f'Invalid JSON payload received. Unknown name "{unknown[0]}": '
                          f"entries.list takes {', '.join(sorted(_REQUEST_FIELDS))}")
        projects = self._projects(body)
        text = body.get("filter", "")
        if not isinstance(text, str):
            raise invalid("filter must be a string", field="filter")
        try:
            predicate = parse(text)
        except FilterError as exc:
            raise invalid(f"Unparseable filter: {exc}", field="filter") from None
        order = body.get("orderBy") or "timestamp asc"
        if order not in ORDERS:
            raise invalid(f"orderBy must be one of {', '.join(repr(o) for o in ORDERS)}, got {order!r}",
                          field="order_by")
        size = body.get("pageSize")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 1000):
            raise invalid(f"pageSize must be an integer between 0 and 1000, got {size!r}", field="page_size")
        token = body.get("pageToken") or None
        if token is not None and not isinstance(token, str):
            raise invalid("pageToken must be a string", field="page_token")
        now = time.monotonic()
        with self._lock:
            visible = [k.entry for k in self._entries if k.project in projects and k.visible_at <= now]
        try:
            chosen = sorted((e for e in visible if predicate(e)), key=lambda e: e["timestamp"],
                            reverse=order == "timestamp desc")
        except FilterError as exc:
            raise invalid(f"Unparseable filter: {exc}", field="filter") from None
        listing = f"entries:{sorted(projects)}:{text}:{order}"
        items, next_token = page(chosen, listing, str(size) if size else None, token, default=DEFAULT_PAGE_SIZE)
        out: dict[str, Any] = {}
        if items:
            out["entries"] = items
        if next_token:
            out["nextPageToken"] = next_token
        return out

    @staticmethod
    def _projects(body: Mapping[str, Any]) -> set[str]:
        for field, snake in (("resourceNames", "resource_names"), ("projectIds", "project_ids")):
            if not isinstance(body.get(field) or [], list):
                raise invalid(f"{field} must be a list of strings, e.g. [\"projects/PROJECT_ID\"] for resourceNames",
                              field=snake)
        names = list(body.get("resourceNames") or []) + [f"projects/{p}" for p in body.get("projectIds") or []]
        if not names:
            raise invalid('resourceNames is required, e.g. {"resourceNames": ["projects/PROJECT_ID"]}',
                          field="resource_names")
        projects = set()
        for name in names:
            if not isinstance(name, str) or not _PROJECT.fullmatch(name):
                raise invalid(f"resourceNames: {name!r} is not supported by the emulator: use projects/PROJECT_ID "
                              "(organizations, folders, billing accounts and log views are not emulated)",
                              field="resource_names")
            projects.add(name.split("/")[1])
        return projects
