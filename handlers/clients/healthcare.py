"""Cloud Healthcare API over REST: DICOM import/export and long-running operations.

Credentials come from ``google.auth.default()`` through an ``AuthorizedSession``;
with ``HEALTHCARE_EMULATOR_HOST`` set, requests go to that base URL without
credentials (the local emulator). 429, 5xx and connection errors are retried
with exponential backoff and jitter within the caller's budget; other 4xx are
not retried.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlencode

from handlers.retry import Backoff, Deadline

API_ROOT = "https://healthcare.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
REQUEST_TIMEOUT = 60.0


class ApiError(Exception):
    """An error answer from the API (Google JSON error body), or no answer at all."""

    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(f"{code} {status}: {message}")
        self.code = code
        self.status = status
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.code == 429 or self.code >= 500 or self.code == 0


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


def _count(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _session() -> tuple[Any, str]:
    emulator = os.environ.get("HEALTHCARE_EMULATOR_HOST")
    if emulator:
        import requests

        return requests.Session(), emulator.rstrip("/")
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=[SCOPE])
    return AuthorizedSession(credentials), API_ROOT


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
                self._session, default_url = _session()
                self._base_url = self._base_url or default_url
            return self._session, (self._base_url or API_ROOT).rstrip("/")

    def request(self, method: str, path: str, deadline: Deadline, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Call ``/v1/{path}``; retry what can succeed later until ``deadline``; raise :class:`ApiError`."""
        import requests

        backoff = Backoff()
        session, base_url = self._connect()
        url = f"{base_url}/v1/{path}"
        while True:
            try:
                response = session.request(method, url, json=body,
                                                 timeout=min(REQUEST_TIMEOUT, max(1.0, deadline.remaining())))
            except requests.RequestException as exc:
                failure = ApiError(0, "UNAVAILABLE", f"no answer from {base_url}: {exc.__class__.__name__}")
            else:
                if response.status_code < 400:
                    return response.json() if response.content else {}
                failure = _api_error(response)
            if not failure.retryable or not backoff.sleep(deadline):
                raise failure

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

    def get_operation(self, name: str, deadline: Deadline) -> Operation:
        return Operation.parse(self.request("GET", name, deadline))

    def wait(self, name: str, deadline: Deadline, poll: Backoff | None = None) -> Operation:
        """Poll until the operation is done or the budget runs out (then the last state)."""
        poll = poll or Backoff(initial=0.5, maximum=5.0, rand=lambda: 1.0)
        while True:
            operation = self.get_operation(name, deadline)
            if operation.done:
                return operation
            delay = poll.next_delay()
            if delay >= deadline.remaining():
                return operation
            time.sleep(delay)


def _api_error(response: Any) -> ApiError:
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {}
    return ApiError(
        int(error.get("code") or response.status_code),
        str(error.get("status") or response.reason or "UNKNOWN"),
        str(error.get("message") or response.text[:200] or "no message"),
    )
