"""Emulator behaviour where the real API is UNCONFIRMED, switchable at start or run time.

``partialFailure`` decides how an import or export ends when some instances
failed and others succeeded:

* ``"error"`` (default): ``done`` with ``error`` {code ``partialFailureCode``
  (default 3, INVALID_ARGUMENT), message}; the counters stay in ``metadata``;
* ``"response"``: ``done`` with the usual ``response``; only
  ``metadata.counter.failure`` tells that something failed.

When every instance failed, the operation always ends with ``error``.

``logOperationId`` decides what the ``operation.id`` of a per-file Cloud
Logging entry holds (UNCONFIRMED in the public docs): ``"name"`` (default, the
full operation name ``projects/.../operations/ID``) or ``"id"`` (its last
segment). Clients must query so that either works.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

from emulator.errors import CANONICAL, INVALID_ARGUMENT

STYLES = ("error", "response")
OPERATION_ID_FORMS = ("name", "id")


class SettingsError(ValueError):
    """Settings that cannot be applied; the message names the field."""


@dataclass(frozen=True)
class Settings:
    partial_failure: str = "error"
    partial_failure_code: int = INVALID_ARGUMENT
    log_operation_id: str = "name"

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        return {"partialFailure": values["partial_failure"], "partialFailureCode": values["partial_failure_code"],
                "logOperationId": values["log_operation_id"]}

    def updated(self, changes: Mapping[str, Any]) -> "Settings":
        """These settings with the JSON ``changes`` applied (fields absent stay as they are)."""
        if not isinstance(changes, Mapping):
            raise SettingsError("the settings must be a JSON object such as {\"partialFailure\": \"response\"}")
        unknown = set(changes) - {"partialFailure", "partialFailureCode", "logOperationId"}
        if unknown:
            raise SettingsError(f"unknown setting(s) {sorted(unknown)}: use partialFailure, partialFailureCode "
                                "and logOperationId")
        style = changes.get("partialFailure", self.partial_failure)
        if style not in STYLES:
            raise SettingsError(f"partialFailure must be one of {list(STYLES)}, got {style!r}")
        code = changes.get("partialFailureCode", self.partial_failure_code)
        if isinstance(code, bool) or not isinstance(code, int) or code not in CANONICAL:
            raise SettingsError(f"partialFailureCode must be a canonical error code 1-16 (3, 13...), got {code!r}")
        form = changes.get("logOperationId", self.log_operation_id)
        if form not in OPERATION_ID_FORMS:
            raise SettingsError(f"logOperationId must be one of {list(OPERATION_ID_FORMS)}, got {form!r}")
        return replace(self, partial_failure=style, partial_failure_code=code, log_operation_id=form)


class LiveSettings:
    """The current settings (thread-safe), and those the emulator started with."""

    def __init__(self, initial: Settings) -> None:
        self.initial = initial
        self._current = initial
        self._lock = threading.Lock()

    def get(self) -> Settings:
        with self._lock:
            return self._current

    def update(self, changes: Mapping[str, Any]) -> Settings:
        with self._lock:
            self._current = self._current.updated(changes)
            return self._current

    def restore(self) -> None:
        with self._lock:
            self._current = self.initial
