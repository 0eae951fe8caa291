"""Timestamps in the API's format: RFC 3339, UTC, with a ``Z``."""

from __future__ import annotations

from datetime import datetime, timezone


def rfc3339(moment: datetime) -> str:
    """``2024-05-01T12:00:00.123456Z`` (microseconds, always UTC)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now() -> datetime:
    return datetime.now(timezone.utc)


def rfc3339_now() -> str:
    return rfc3339(now())
