"""A recording HTTP server for the stack's tests: keeps every request, answers from a script."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass(frozen=True)
class Request:
    """One request as received."""

    at: float  # time.monotonic()
    path: str
    headers: dict[str, str]  # names lower-cased
    raw_headers: list[tuple[str, bytes]]  # names as sent, values as bytes
    body: bytes


class Recorder:
    """``ThreadingHTTPServer`` on 127.0.0.1; ``respond(request, index)`` gives (status, seconds to wait first).

    ``index`` counts the requests received so far (0 for the first).
    """

    def __init__(
        self, respond: Callable[[Request, int], tuple[int, float]] = lambda request, index: (200, 0.0), port: int = 0
    ) -> None:
        self.respond = respond
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                raw = [(name, value.encode("latin-1")) for name, value in self.headers.items()]
                request = Request(time.monotonic(), self.path, {k.lower(): v for k, v in self.headers.items()}, raw, body)
                with recorder._lock:
                    index = len(recorder.requests)
                    recorder.requests.append(request)
                    recorder.in_flight += 1
                    recorder.max_in_flight = max(recorder.max_in_flight, recorder.in_flight)
                try:
                    status, wait = recorder.respond(request, index)
                    time.sleep(wait)
                finally:
                    with recorder._lock:
                        recorder.in_flight -= 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Recorder":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Request]:
        """Wait until ``count`` requests arrived; return them all."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.requests)} requests after {timeout} s, expected {count}")
            time.sleep(0.02)
        return list(self.requests)
