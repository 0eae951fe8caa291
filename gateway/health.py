"""``GET /healthz`` (200 or 503 with the spool's numbers as JSON) and the spool depth logged on a timer.

Unhealthy when the oldest instance waiting in the spool is older than
``health.stuck_after_seconds`` (uploads are failing or far behind), or when
the DICOM port is closed.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from handlers import log

from .spool import Spool

__all__ = ["Health"]


class Health:
    """The HTTP endpoint and the stats timer, both on daemon threads."""

    def __init__(self, spool: Spool, *, address: str, port: int, stuck_after: float, stats_every: float,
                 listening: Callable[[], bool]) -> None:
        self.spool = spool
        self.stuck_after = stuck_after
        self.stats_every = stats_every
        self.listening = listening
        self._stop = threading.Event()
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?")[0] not in ("/healthz", "/"):
                    self.send_error(404, "try /healthz")
                    return
                healthy, body = health.check()
                data = json.dumps(body).encode()
                self.send_response(200 if healthy else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - no access log lines
                pass

        self._http = ThreadingHTTPServer((address, port), Handler)
        self._http.daemon_threads = True
        self._serving = False

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def check(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, body): body has the spool stats and, when unhealthy, why."""
        stats = self.spool.stats()
        body: dict[str, Any] = {"status": "ok", **asdict(stats), "oldest_age": round(stats.oldest_age, 3)}
        problems = []
        if stats.oldest_age > self.stuck_after:
            problems.append(f"the oldest spooled instance waits for {stats.oldest_age:.0f} s "
                            f"(more than {self.stuck_after:g} s): uploads to Cloud Storage are failing, see the log")
        if not self.listening():
            problems.append("the DICOM port is not listening")
        if problems:
            body.update(status="unhealthy", problems=problems)
        return not problems, body

    def start(self) -> None:
        self._serving = True
        threading.Thread(target=self._http.serve_forever, name="healthz", daemon=True).start()
        threading.Thread(target=self._log_stats, name="spool-stats", daemon=True).start()

    def stop(self) -> None:
        """Stop serving; safe when start() never ran (shutdown() would wait for a loop that never began)."""
        self._stop.set()
        if self._serving:
            self._http.shutdown()
        self._http.server_close()

    def _log_stats(self) -> None:
        while not self._stop.wait(self.stats_every):
            healthy, body = self.check()
            if self._stop.is_set():  # stopped during the check: the gateway is closing, not unhealthy
                return
            fields = {key: value for key, value in body.items() if key != "status"}
            (log.info if healthy else log.warning)("spool", healthy=healthy, **fields)
