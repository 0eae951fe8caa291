"""Cloud Logging API v2 over REST: ``entries.list``, to read the per-file errors of Healthcare API imports.

Same session rules as the Healthcare client (``handlers.clients.rest``): ADC
through an ``AuthorizedSession``, or ``LOGGING_EMULATOR_HOST`` (the local
emulator serves ``POST /v2/entries:list`` too). Each page is retried a bounded
number of times within the caller's budget.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

from handlers.clients.rest import open_session, send
from handlers.retry import Deadline

API_ROOT = "https://logging.googleapis.com"
PAGE_SIZE = 1000
MAX_ATTEMPTS = 4


class CloudLogging:
    """The one Cloud Logging method this project calls; ``calls`` counts requests (tests, benchmarks)."""

    def __init__(self, session: Any = None, base_url: str | None = None) -> None:
        self._session = session
        self._base_url = base_url
        self._lock = threading.Lock()
        self.calls = 0

    def _connect(self) -> tuple[Any, str]:
        with self._lock:
            if self._session is None:
                self._session, default_url = open_session("LOGGING_EMULATOR_HOST", API_ROOT)
                self._base_url = self._base_url or default_url
            return self._session, (self._base_url or API_ROOT).rstrip("/")

    def list_entries(self, project: str, query: str, deadline: Deadline,
                     order_by: str = "timestamp asc") -> Iterator[dict[str, Any]]:
        """Every entry of ``projects/{project}`` matching ``query``, all pages; raises ApiError."""
        session, base_url = self._connect()
        token = ""
        while True:
            body: dict[str, Any] = {"resourceNames": [f"projects/{project}"], "filter": query,
                                    "orderBy": order_by, "pageSize": PAGE_SIZE}
            if token:
                body["pageToken"] = token
            with self._lock:
                self.calls += 1
            page = send(session, "POST", f"{base_url}/v2/entries:list", deadline, body,
                        max_attempts=MAX_ATTEMPTS).json()
            yield from page.get("entries") or []
            token = page.get("nextPageToken") or ""
            if not token:
                return
