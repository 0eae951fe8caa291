"""A Cloud Storage stand-in that holds no object: 404 to every GET, each request recorded."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


class NotFoundEverywhere(BaseHTTPRequestHandler):
    """Answers 404 to every GET; records each request's target (as on its request line) and Authorization."""

    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        body = b'{"error": {"code": 404, "message": "No such object"}}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def not_found_server() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a fresh stand-in; :attr:`NotFoundEverywhere.seen` starts empty."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFoundEverywhere)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    NotFoundEverywhere.seen = []
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
