"""Cloud Healthcare API over REST: DICOM import/export, long-running operations, a little DICOMweb.

Credentials come from ``google.auth.default()`` through an ``AuthorizedSession``;
with ``HEALTHCARE_EMULATOR_HOST`` set, requests go to that base URL without
credentials (the local emulator). 429, 5xx and connection errors are retried
with exponential backoff and jitter within the caller's budget; other 4xx are
not retried (``handlers.clients.rest``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping
from urllib.parse import urlencode

from handlers.clients.rest import ApiError, open_session, send
from handlers.retry import Backoff, Deadline

__all__ = ["API_ROOT", "ApiError", "HealthcareApi", "Operation"]

API_ROOT = "https://healthcare.googleapis.com"
DICOM_AS_STORED = "application/dicom; transfer-syntax=*"


@dataclass(frozen=True)
class Operation:
    """A long-running operation's state, counters as integers (the API sends int64 strings)."""

    name: str
    done: bool
    success: int
    failure: int
    pending: int
    error: Mapping[str, Any] | None
    logs_url: str
    create_time: str
    end_time: str

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> "Operation":
        metadata = body.get("metadata") or {}
        counter = metadata.get("counter") or {}
        return cls(
            name=str(body.get("name", "")),
            done=bool(body.get("done", False)),
            success=_count(counter.get("success")),
            failure=_count(counter.get("failure")),
            pending=_count(counter.get("pending")),
            error=body.get("error") or None,
            logs_url=str(metadata.get("logsUrl", "")),
            create_time=str(metadata.get("createTime", "")),
            end_time=str(metadata.get("endTime", "")),
        )


    def to_record(self) -> dict[str, Any]:
        """A JSON-able copy, for the batch record (a finished operation is read once)."""
        return {**asdict(self), "error": dict(self.error) if self.error else None}

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> "Operation":
        return cls(**{key: data.get(key) for key in cls.__dataclass_fields__})  # type: ignore[arg-type]


def _count(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


class HealthcareApi:
    """The few Healthcare API v1 methods this project calls."""

    def __init__(self, session: Any = None, base_url: str | None = None) -> None:
        self._session = session
        self._base_url = base_url
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return self._connect()[1]

    def _connect(self) -> tuple[Any, str]:
        """The HTTP session, created on first use (credentials are looked up then)."""
        with self._lock:
            if self._session is None:
                self._session, default_url = open_session("HEALTHCARE_EMULATOR_HOST", API_ROOT)
                self._base_url = self._base_url or default_url
            return self._session, (self._base_url or API_ROOT).rstrip("/")

    def request(self, method: str, path: str, deadline: Deadline, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Call ``/v1/{path}``; retry what can succeed later until ``deadline``; raise :class:`ApiError`."""
        session, base_url = self._connect()
        response = send(session, method, f"{base_url}/v1/{path}", deadline, body)
        return response.json() if response.content else {}

    def import_dicom(self, store: str, uri: str, deadline: Deadline, blob_storage_class: str | None = None) -> Operation:
        body: dict[str, Any] = {"gcsSource": {"uri": uri}}
        if blob_storage_class:
            body["blobStorageSettings"] = {"blobStorageClass": blob_storage_class}
        return Operation.parse(self.request("POST", f"{store}:import", deadline, body))

    def export_dicom(self, store: str, body: Mapping[str, Any], deadline: Deadline) -> Operation:
        return Operation.parse(self.request("POST", f"{store}:export", deadline, body))

    def search_dicom(self, store: str, resource: str, params: Mapping[str, str], deadline: Deadline) -> list[dict[str, Any]]:
        """QIDO-RS ``GET {store}/dicomWeb/{resource}?params`` (e.g. ``studies/S/series``); [] when nothing matches."""
        found = self.request("GET", f"{store}/dicomWeb/{resource}?{urlencode(params)}", deadline)
        return found if isinstance(found, list) else []

    def retrieve_instance(self, store: str, path: str, deadline: Deadline) -> bytes:
        """WADO-RS RetrieveInstance of ``studies/S/series/SE/instances/I``: the bytes as stored."""
        session, base_url = self._connect()
        response = send(session, "GET", f"{base_url}/v1/{store}/dicomWeb/{path}", deadline,
                        headers={"Accept": DICOM_AS_STORED})
        return bytes(response.content)

    def delete_instance(self, store: str, path: str, deadline: Deadline) -> bool:
        """DICOMweb DeleteInstance of ``studies/S/series/SE/instances/I``; False when it was not stored (404)."""
        try:
            self.request("DELETE", f"{store}/dicomWeb/{path}", deadline)
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    def get_operation(self, name: str, deadline: Deadline) -> Operation:
        return Operation.parse(self.request("GET", name, deadline))

    def wait(self, name: str, deadline: Deadline, poll: Backoff | None = None) -> Operation:
        """Poll until the operation is done or the budget runs out (then the last state).

        Polls after 0.25 s, then 1.5 times later each time up to 5 s: an import of a
        few hundred files ends within two seconds, and is seen ending within half a
        second of it (a doubling schedule saw a 1.7 s operation end at 3.5 s).
        """
        poll = poll or Backoff(initial=0.25, maximum=5.0, multiplier=1.5, rand=lambda: 1.0)
        while True:
            operation = self.get_operation(name, deadline)
            if operation.done:
                return operation
            delay = poll.next_delay()
            if delay >= deadline.remaining():
                return operation
            time.sleep(delay)
