"""Google API errors: canonical codes, the JSON error body and the operation ``Status``."""

from __future__ import annotations

from typing import Any

# Canonical code -> (status name, HTTP status), as in google.rpc.Code.
CANONICAL: dict[int, tuple[str, int]] = {
    1: ("CANCELLED", 499),
    2: ("UNKNOWN", 500),
    3: ("INVALID_ARGUMENT", 400),
    4: ("DEADLINE_EXCEEDED", 504),
    5: ("NOT_FOUND", 404),
    6: ("ALREADY_EXISTS", 409),
    7: ("PERMISSION_DENIED", 403),
    8: ("RESOURCE_EXHAUSTED", 429),
    9: ("FAILED_PRECONDITION", 400),
    10: ("ABORTED", 409),
    11: ("OUT_OF_RANGE", 400),
    12: ("UNIMPLEMENTED", 501),
    13: ("INTERNAL", 500),
    14: ("UNAVAILABLE", 503),
    15: ("DATA_LOSS", 500),
    16: ("UNAUTHENTICATED", 401),
}

INVALID_ARGUMENT = 3
NOT_FOUND = 5
ALREADY_EXISTS = 6
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
CANCELLED = 1


class ApiError(Exception):
    """An error answered in Google's JSON error format; ``code`` is the canonical code.

    ``http`` overrides the code's usual HTTP status where the API answers another one (DICOMweb's 406).
    """

    def __init__(
        self,
        code: int,
        message: str,
        *,
        field: str | None = None,
        details: list[dict[str, Any]] | None = None,
        http: int | None = None,
    ):
        if code not in CANONICAL:
            raise ValueError(f"{code} is not a canonical google.rpc.Code")
        super().__init__(message)
        self.code = code
        self._http = http
        self.message = message
        self.details = list(details or [])
        if field:
            self.details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": field, "description": message}],
                }
            )

    @property
    def status(self) -> str:
        return CANONICAL[self.code][0]

    @property
    def http_status(self) -> int:
        return self._http or CANONICAL[self.code][1]

    def body(self) -> dict[str, Any]:
        """``{"error": {"code": HTTP, "message", "status", "details"}}``."""
        return {
            "error": {
                "code": self.http_status,
                "message": self.message,
                "status": self.status,
                "details": self.details,
            }
        }

    def status_json(self) -> dict[str, Any]:
        """The error as a ``google.rpc.Status`` (an operation's ``error``)."""
        return status_json(self.code, self.message, self.details)


def status_json(code: int, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A ``google.rpc.Status`` JSON object; ``details`` omitted when empty, as proto3 JSON does."""
    out: dict[str, Any] = {"code": code, "message": message}
    if details:
        out["details"] = details
    return out


def invalid(message: str, field: str | None = None) -> ApiError:
    return ApiError(INVALID_ARGUMENT, message, field=field)


def not_found(message: str) -> ApiError:
    return ApiError(NOT_FOUND, message)
