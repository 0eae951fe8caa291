"""The gateway's inbox writer (gateway/inbox.py) against a recording Cloud Storage stand-in."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gateway.inbox import CREATED, IDENTICAL, GcsInbox


class _OneObjectBucket(BaseHTTPRequestHandler):
    """Holds at most one object; records every request as (method, path)."""

    requests: list[tuple[str, str]] = []
    stored: dict[str, str] = {}

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).requests.append(("POST", self.path.split("?")[0]))
        payload = self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).stored:
            self._reply(412, {"error": {"code": 412, "message": "conditionNotMet"}})
            return
        content = payload.split(b"\r\n\r\n")[-1].rsplit(b"\r\n--", 1)[0]  # multipart: metadata part, then the bytes
        type(self).stored = {"name": "x.dcm", "bucket": "inbox", "generation": "1",
                             "md5Hash": base64.b64encode(hashlib.md5(content).digest()).decode()}
        self._reply(200, type(self).stored)

    def do_GET(self) -> None:  # noqa: N802
        type(self).requests.append(("GET", self.path.split("?")[0]))
        if self.path.split("?")[0].endswith("/o/x.dcm") and type(self).stored:
            self._reply(200, type(self).stored)
        else:
            self._reply(404, {"error": {"code": 404, "message": "Not Found"}})

    def log_message(self, *args) -> None:
        pass


def test_an_upload_and_a_resend_make_no_bucket_lookup() -> None:
    """google-cloud-storage's default GETs the bucket in the background: the gateway's account may not, and need not."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OneObjectBucket)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _OneObjectBucket.requests, _OneObjectBucket.stored = [], {}
    try:
        inbox = GcsInbox("inbox", endpoint=f"http://127.0.0.1:{server.server_address[1]}", project="p")
        assert inbox.put("x.dcm", b"DICM instance bytes", 1.0) == CREATED
        assert inbox.put("x.dcm", b"DICM instance bytes", 2.0) == IDENTICAL
        time.sleep(0.3)  # room for a background lookup
    finally:
        server.shutdown()
    methods = [method for method, _ in _OneObjectBucket.requests]
    assert methods == ["POST", "POST", "GET"], _OneObjectBucket.requests
    assert not [path for _, path in _OneObjectBucket.requests if path.rstrip("/").endswith("/b/inbox")]
