"""Long-running operations: state, counters, cancellation and their exact JSON shape.

A running operation is ``{"name", "metadata"}`` (proto3 JSON drops ``done: false``);
a finished one adds ``"done": true`` and exactly one of ``error`` (a
``google.rpc.Status``) or ``response``. ``metadata`` is ``OperationMetadata``:
int64 counters as strings, absent when zero; ``cancelRequested`` only when true.
"""

from __future__ import annotations

import secrets
import threading
from datetime import datetime
from typing import Any
from urllib.parse import quote

from emulator.clock import now, rfc3339
from emulator.errors import CANCELLED, status_json


def api_method(version: str, service: str, method: str) -> str:
    """``google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData`` and the like."""
    return f"google.cloud.healthcare.{version}.{service}.{method}"


def type_url(version: str, message: str) -> str:
    """``type.googleapis.com/google.cloud.healthcare.v1.{message}``."""
    return f"type.googleapis.com/google.cloud.healthcare.{version}.{message}"


def logs_url(name: str) -> str:
    """A Cloud Console Logs Explorer URL for the operation (locally: GET /emulator/logs?operation=ID)."""
    project = name.split("/")[1]
    query = f'operation.id="{name}"'
    return f"https://console.cloud.google.com/logs/query;query={quote(query, safe='')}?project={quote(project, safe='')}"


class Operation:
    """One long-running operation (thread-safe)."""

    def __init__(self, dataset: str, op_id: str, version: str, method: str, with_counter: bool) -> None:
        self.id = op_id
        self.dataset = dataset
        self.name = f"{dataset}/operations/{op_id}"
        self.version = version
        self.api_method_name = method
        self.with_counter = with_counter
        self.create_time: datetime = now()
        self.end_time: datetime | None = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self.success = 0
        self.failure = 0
        self.pending = 0
        self.done = False
        self.error: dict[str, Any] | None = None
        self.response: dict[str, Any] | None = None

    # progress
    def count(self, success: int = 0, failure: int = 0, pending: int = 0) -> None:
        with self._lock:
            self.success += success
            self.failure += failure
            self.pending += pending

    def counters(self) -> tuple[int, int, int]:
        with self._lock:
            return self.success, self.failure, self.pending

    # cancellation
    def request_cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if a cancel was requested meanwhile (wakes at once)."""
        if seconds > 0:
            return self._cancel.wait(seconds)
        return self._cancel.is_set()

    # outcome
    def finish(self, *, response: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> None:
        """End the operation with ``response`` (its ``@type`` included) or ``error`` (a Status)."""
        if (response is None) == (error is None):
            raise ValueError("an operation ends with exactly one of response or error")
        with self._lock:
            if self.done:
                return
            self.pending = 0
            self.response, self.error = response, error
            self.end_time = now()
            self.done = True

    def fail(self, code: int, message: str, details: list[dict[str, Any]] | None = None) -> None:
        self.finish(error=status_json(code, message, details))

    def finish_cancelled(self) -> None:
        self.fail(CANCELLED, "Operation was cancelled")

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            metadata: dict[str, Any] = {
                "@type": type_url(self.version, "OperationMetadata"),
                "apiMethodName": self.api_method_name,
                "createTime": rfc3339(self.create_time),
            }
            if self.end_time is not None:
                metadata["endTime"] = rfc3339(self.end_time)
            if self._cancel.is_set():
                metadata["cancelRequested"] = True
            if self.with_counter:
                metadata["logsUrl"] = logs_url(self.name)
                counter = {k: str(v) for k, v in (("success", self.success), ("failure", self.failure), ("pending", self.pending)) if v}
                metadata["counter"] = counter
            out: dict[str, Any] = {"name": self.name, "metadata": metadata}
            if self.done:
                out["done"] = True
                if self.error is not None:
                    out["error"] = self.error
                else:
                    out["response"] = self.response
            return out


class Operations:
    """Every operation, by dataset (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, Operation] = {}

    def create(self, dataset: str, version: str, method: str, *, with_counter: bool) -> Operation:
        with self._lock:
            while True:
                op_id = str(secrets.randbelow(9 * 10**18) + 10**18)  # 19 digits, like the real ids
                if f"{dataset}/operations/{op_id}" not in self._by_name:
                    break
            operation = Operation(dataset, op_id, version, method, with_counter)
            self._by_name[operation.name] = operation
            return operation

    def get(self, name: str) -> Operation | None:
        with self._lock:
            return self._by_name.get(name)

    def by_id(self, op_id: str) -> Operation | None:
        with self._lock:
            return next((op for op in self._by_name.values() if op.id == op_id), None)

    def in_dataset(self, dataset: str) -> list[Operation]:
        """The dataset's operations, oldest first."""
        with self._lock:
            return [op for op in self._by_name.values() if op.dataset == dataset]

    def forget_dataset(self, dataset: str) -> None:
        with self._lock:
            for name in [n for n, op in self._by_name.items() if op.dataset == dataset]:
                op = self._by_name.pop(name)
                op.request_cancel()

    def clear(self) -> None:
        with self._lock:
            for op in self._by_name.values():
                op.request_cancel()
            self._by_name.clear()
