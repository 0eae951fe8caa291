"""A fault-injecting proxy in front of fake-gcs-server: Cloud Storage that fails the way Cloud Storage does.

Every request is forwarded as is to the upstream fake-gcs-server, unless the
proxy answers it itself:

* **faults**, the Healthcare emulator's model (``emulator/faults.py``): per method id
  (``objects.get``, ``objects.insert``, ``objects.list``, ``objects.rewrite``,
  ``objects.delete``... or ``*``) a rate of 429 and of 503 answers and a latency,
  with a seed; the request is then never forwarded;
* **an outage** of N seconds: every request is answered 503 until it ends;
* **one write per second per object name** (Cloud Storage's documented limit,
  which fake-gcs-server does not enforce): a mutation of an object name
  (insert, rewrite or copy to it, compose, patch, update, delete) less than
  ``writeIntervalSeconds`` (default 1) after the last accepted one is answered
  429 ``rateLimitExceeded``, unless its ``ifGenerationMatch`` precondition fails
  (then it is a 412: no write happens, so no limit applies);
* **``ifGenerationMatch`` of every mutation**, which fake-gcs-server checks only
  on multipart uploads (it deletes, patches, overwrites by rewrite or copy,
  and takes media and resumable uploads whatever the precondition): a failed
  one is answered 412 ``conditionNotMet``, as Cloud Storage does, and never
  forwarded. A resumable upload's precondition, given when its session starts,
  is checked on each of its chunks.

The precondition check, the limit and the write of one object name happen under
that name's lock, so of concurrent writes conditional on one generation exactly
one succeeds and the others get their 412 (never a 429, never an overwrite).

Admin endpoints under ``/proxy/`` (never forwarded, never faulted): ``GET /proxy/health``,
``GET|PUT|DELETE /proxy/faults``, ``GET|PUT|DELETE /proxy/outage`` (``{"seconds": N}``),
``GET|PUT /proxy/config`` (``{"writeIntervalSeconds": 1.0}``; 0 turns the limit off),
``GET /proxy/stats``, ``POST /proxy/reset`` (statistics). JSON log lines on stdout.

Run as ``python -m localstack.gcsproxy --upstream http://127.0.0.1:N --port M``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qs, quote, urlsplit

from emulator.faults import FaultConfig, Faults, FaultSpecError

from .gcsrequests import Classified, classify

__all__ = ["ProxyState", "main", "serve"]

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                        "transfer-encoding", "upgrade", "content-length", "host"})
OPERATION_ONLY = ("minOperationSeconds", "failOperation", "logDelaySeconds", "logSampleAbove")
DEFAULT_WRITE_INTERVAL = 1.0
UPSTREAM_TIMEOUT = 120.0
PRECONDITION_FAILED = "At least one of the pre-conditions you specified did not hold."

# An answer to relay to the client: status, reason phrase (None: the standard one), headers, body.
Answer = tuple[int, str | None, list[tuple[str, str]], bytes]


def log(severity: str, message: str, **fields: Any) -> None:
    entry = {"severity": severity, "message": message, "component": "gcs-proxy",
             "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")}
    entry.update({key: value for key, value in fields.items() if value is not None})
    sys.stdout.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def error_body(code: int, reason: str, message: str) -> bytes:
    """The Cloud Storage JSON API's error document."""
    domain = "usageLimits" if code == 429 else "global"
    return json.dumps({"error": {"code": code, "message": message,
                                 "errors": [{"message": message, "domain": domain, "reason": reason}]}}).encode()


def error_answer(code: int, reason: str, message: str) -> Answer:
    """A Cloud Storage JSON API error, as an answer to relay."""
    return code, None, [("Content-Type", "application/json")], error_body(code, reason, message)


def parse_faults(spec: Any) -> FaultConfig:
    """The emulator's fault configuration, without its operation-only fields (Cloud Storage has no operations)."""
    methods = spec.get("methods") if isinstance(spec, Mapping) else None
    if isinstance(methods, Mapping):
        for method, entry in methods.items():
            used = [key for key in OPERATION_ONLY if isinstance(entry, Mapping) and key in entry]
            if used:
                raise FaultSpecError(f"methods[{method!r}] sets {', '.join(used)}: Cloud Storage calls have no "
                                     "operation; use rate429, rate503 and latencySeconds")
    return FaultConfig.parse(spec)


class WriteLimiter:
    """At most one accepted mutation per object name per ``interval`` seconds."""

    def __init__(self, interval: float = DEFAULT_WRITE_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def reserve(self, target: tuple[str, str]) -> tuple[bool, float | None]:
        """(accepted, the previous write's time to restore if the write does not happen)."""
        now = time.monotonic()
        with self._lock:
            previous = self._last.get(target)
            if self.interval > 0 and previous is not None and now - previous < self.interval:
                return False, previous
            self._last[target] = now
            if len(self._last) > 50_000:
                self._prune(now)
            return True, previous

    def release(self, target: tuple[str, str], previous: float | None) -> None:
        """The reserved write did not happen (refused upstream, or a resumable chunk that did not finish)."""
        with self._lock:
            if previous is None:
                self._last.pop(target, None)
            else:
                self._last[target] = previous

    def _prune(self, now: float) -> None:
        horizon = max(self.interval, 1.0)
        for key in [key for key, at in self._last.items() if now - at >= horizon]:
            del self._last[key]


class ObjectLocks:
    """One lock per object name, held by the mutations of that name one at a time; other names stay concurrent.

    A name's lock exists only while requests hold or wait for it, so memory is bounded by the requests in flight.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[threading.Lock, list[int]]] = {}  # name -> lock, [users]

    @contextmanager
    def hold(self, target: tuple[str, str]) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.setdefault(target, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users[0] -= 1
                if not users[0]:
                    del self._locks[target]


class ProxyState:
    """Faults, outage, write limit and statistics, shared by every request thread."""

    def __init__(self, upstream: str, faults: FaultConfig | None = None,
                 write_interval: float = DEFAULT_WRITE_INTERVAL) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.faults = Faults(faults)
        self.limiter = WriteLimiter(write_interval)
        self.objects = ObjectLocks()
        self._lock = threading.Lock()
        self._outage_until = 0.0
        self.uploads: dict[str, tuple[tuple[str, str], str | None]] = {}  # resumable upload id -> target, precondition
        self.requests: Counter[str] = Counter()
        self.injected: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.rate_limited: Counter[str] = Counter()
        self.outage_refused = 0

    # -- outage -------------------------------------------------------------------
    def start_outage(self, seconds: float) -> None:
        with self._lock:
            self._outage_until = time.monotonic() + seconds
        log("WARNING", "outage started: every request is answered 503", seconds=seconds)

    def end_outage(self) -> None:
        with self._lock:
            self._outage_until = 0.0
        log("INFO", "outage ended")

    def outage_remaining(self) -> float:
        with self._lock:
            return max(0.0, self._outage_until - time.monotonic())

    # -- statistics ---------------------------------------------------------------
    def count(self, method: str) -> None:
        with self._lock:
            self.requests[method] += 1

    def count_injected(self, method: str, status: int) -> None:
        with self._lock:
            self.injected[method][str(status)] += 1

    def count_rate_limited(self, target: tuple[str, str]) -> None:
        bucket, name = target
        folder = name.split("/", 1)[0] + "/" if "/" in name else ""
        with self._lock:
            self.rate_limited[f"{bucket}/{folder}"] += 1

    def count_outage(self) -> None:
        with self._lock:
            self.outage_refused += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": dict(self.requests),
                    "injectedErrors": {method: dict(by_status) for method, by_status in self.injected.items()},
                    "rateLimited": dict(self.rate_limited), "outageRefused": self.outage_refused,
                    "outageRemainingSeconds": round(max(0.0, self._outage_until - time.monotonic()), 3)}

    def reset_stats(self) -> None:
        with self._lock:
            self.requests.clear()
            self.injected.clear()
            self.rate_limited.clear()
            self.outage_refused = 0

    def config(self) -> dict[str, Any]:
        return {"writeIntervalSeconds": self.limiter.interval}


class _Upstream(threading.local):
    connection: http.client.HTTPConnection | None = None


def _no_delay(sock: socket.socket) -> None:
    """Send each write at once: a response's headers and body are two writes, and with Nagle's
    algorithm the body waits for the peer's delayed acknowledgement of the headers (40 ms a write)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _wanted_generation(query: Mapping[str, list[str]]) -> str | None:
    """A request's ``ifGenerationMatch`` (a query parameter of the JSON API), if any."""
    return (query.get("ifGenerationMatch") or [None])[0]


def _handler(state: ProxyState) -> type[BaseHTTPRequestHandler]:
    upstream = _Upstream()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            pass

        def setup(self) -> None:
            super().setup()
            _no_delay(self.connection)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._handle()

        do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET  # noqa: N815

        # -- plumbing -------------------------------------------------------------
        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _json(self, status: int, data: Any) -> None:
            body = json.dumps(data, indent=1).encode() + b"\n"
            self._relay((status, None, [("Content-Type", "application/json")], body))

        # -- one request ----------------------------------------------------------
        def _handle(self) -> None:
            body = self._body()
            if self.path.startswith("/proxy/"):
                self._admin(body)
                return
            what = classify(self.command, self.path, self.headers.get("Content-Type", ""), body)
            state.count(what.method)
            if state.outage_remaining() > 0:
                state.count_outage()
                self._relay(error_answer(503, "backendError", "Cloud Storage outage injected by the proxy"))
                return
            faults = state.faults.for_method(what.method)
            if faults.latency_seconds:
                time.sleep(faults.latency_seconds)
            injected = state.faults.draw_error(what.method)
            if injected is not None:
                state.count_injected(what.method, injected)
                log("INFO", "fault injected", method=what.method, status=injected)
                reason = "rateLimitExceeded" if injected == 429 else "backendError"
                self._relay(error_answer(injected, reason, f"{injected} injected by the proxy's faults"))
                return
            self._limited_forward(what, body)

        def _limited_forward(self, what: Classified, body: bytes) -> None:
            query = parse_qs(urlsplit(self.path).query)
            starts_session = self.command == "POST" and query.get("uploadType") == ["resumable"]
            target, wanted = what.target, _wanted_generation(query)
            if what.upload_id and not starts_session:
                target, wanted = state.uploads.get(what.upload_id, (target, wanted))
            if target is None or starts_session:
                self._relay(self._upstream(body, what, (target, wanted) if starts_session and target else None))
                return
            # Check, reserve and write as one step per name: a compare-and-swap loser that passed the check
            # before the winner's write landed would get a 429 instead of its 412, or (limit off) overwrite it.
            with state.objects.hold(target):
                answer = self._write(target, wanted, what, body)
            self._relay(answer)

        def _write(self, target: tuple[str, str], wanted: str | None, what: Classified, body: bytes) -> Answer:
            """A mutation of ``target``: 412, 429 or upstream's answer (the caller holds the name's lock)."""
            if self._precondition_fails(target, wanted):  # no write happens, so no rate limit either
                return error_answer(412, "conditionNotMet", PRECONDITION_FAILED)
            accepted, previous = state.limiter.reserve(target)
            if not accepted:
                state.count_rate_limited(target)
                log("INFO", "rate limited: one write per second per object", method=what.method,
                    bucket=target[0], object=target[1])
                message = (f"The object {target[0]}/{target[1]} exceeded the rate limit for object mutation "
                           "operations (create, update, and delete). Please reduce your request rate.")
                return error_answer(429, "rateLimitExceeded", message)
            answer = self._upstream(body, what, None)
            if not 200 <= answer[0] < 300:
                state.limiter.release(target, previous)
            return answer

        def _precondition_fails(self, target: tuple[str, str], wanted: str | None) -> bool:
            """True when ``wanted`` (an ``ifGenerationMatch``) is not the object's current generation (0: absent)."""
            if wanted is None:
                return False
            path = f"/storage/v1/b/{quote(target[0], safe='')}/o/{quote(target[1], safe='')}?fields=generation"
            try:
                status, _, _, data = self._exchange("GET", path, {"Host": self.headers.get("Host") or ""}, b"")
            except OSError:
                return False
            current = json.loads(data).get("generation", "0") if status == 200 else "0"
            return status in (200, 404) and str(current) != wanted

        def _upstream(self, body: bytes, what: Classified,
                      session_target: tuple[tuple[str, str], str | None] | None) -> Answer:
            """The request as is to fake-gcs-server; its answer (502 when it did not answer)."""
            headers = {key: value for key, value in self.headers.items() if key.lower() not in HOP_BY_HOP}
            headers["Host"] = self.headers.get("Host") or f"{state.upstream_host}:{state.upstream_port}"
            headers["Content-Length"] = str(len(body))
            try:
                answer = self._exchange(self.command, self.path, headers, body)
            except OSError as exc:
                log("WARNING", "upstream did not answer", method=what.method, error=f"{exc.__class__.__name__}: {exc}")
                return error_answer(502, "backendError", f"fake-gcs-server did not answer: {exc}")
            status, _, reply_headers, _ = answer
            if session_target is not None and 200 <= status < 300:
                location = next((v for k, v in reply_headers if k.lower() == "location"), "")
                upload_id = (parse_qs(urlsplit(location).query).get("upload_id") or [""])[0] \
                    or urlsplit(location).path.rsplit("/", 1)[-1]
                if upload_id:
                    state.uploads[upload_id] = session_target
            return answer

        def _relay(self, answer: Answer) -> None:
            status, reason, reply_headers, data = answer
            self.send_response(status, reason)
            for key, value in reply_headers:
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _exchange(self, verb: str, path: str, headers: dict[str, str],
                      body: bytes) -> Answer:
            for attempt in (1, 2):  # a kept-alive connection the upstream closed: one fresh try
                connection = upstream.connection
                if connection is None:
                    connection = http.client.HTTPConnection(state.upstream_host, state.upstream_port,
                                                            timeout=UPSTREAM_TIMEOUT)
                    connection.connect()
                    _no_delay(connection.sock)
                    upstream.connection = connection
                try:
                    connection.request(verb, path, body=body, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                    if response.will_close:
                        connection.close()
                        upstream.connection = None
                    return response.status, response.reason, response.getheaders(), data
                except (http.client.HTTPException, OSError):
                    connection.close()
                    upstream.connection = None
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

        # -- admin ----------------------------------------------------------------
        def _admin(self, body: bytes) -> None:
            path, verb = urlsplit(self.path).path, self.command
            try:
                payload = json.loads(body) if body.strip() else None
            except ValueError:
                self._json(400, {"error": "the body must be JSON"})
                return
            if path == "/proxy/health" and verb == "GET":
                self._json(200, {"status": "ok", "upstream": f"http://{state.upstream_host}:{state.upstream_port}"})
            elif path == "/proxy/faults" and verb == "GET":
                self._json(200, state.faults.config.to_json())
            elif path == "/proxy/faults" and verb == "PUT":
                try:
                    config = parse_faults(payload)
                except FaultSpecError as exc:
                    self._json(400, {"error": f"fault configuration refused: {exc}"})
                    return
                state.faults.set(config)
                log("INFO", "faults set", faults=config.to_json())
                self._json(200, config.to_json())
            elif path == "/proxy/faults" and verb == "DELETE":
                state.faults.clear()
                log("INFO", "faults cleared")
                self._json(200, state.faults.config.to_json())
            elif path == "/proxy/outage" and verb == "GET":
                self._json(200, {"remainingSeconds": round(state.outage_remaining(), 3)})
            elif path == "/proxy/outage" and verb == "PUT":
                seconds = payload.get("seconds") if isinstance(payload, dict) else None
                if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 3600:
                    self._json(400, {"error": 'outage needs {"seconds": N} with 0 < N <= 3600'})
                    return
                state.start_outage(float(seconds))
                self._json(200, {"remainingSeconds": float(seconds)})
            elif path == "/proxy/outage" and verb == "DELETE":
                state.end_outage()
                self._json(200, {"remainingSeconds": 0.0})
            elif path == "/proxy/config" and verb == "GET":
                self._json(200, state.config())
            elif path == "/proxy/config" and verb == "PUT":
                interval = payload.get("writeIntervalSeconds") if isinstance(payload, dict) else None
                if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 <= interval <= 60:
                    self._json(400, {"error": 'config needs {"writeIntervalSeconds": N} with 0 <= N <= 60 (0: off)'})
                    return
                state.limiter.interval = float(interval)
                log("INFO", "config set", writeIntervalSeconds=interval)
                self._json(200, state.config())
            elif path == "/proxy/stats" and verb == "GET":
                self._json(200, state.stats())
            elif path == "/proxy/reset" and verb == "POST":
                state.reset_stats()
                self._json(200, state.stats())
            else:
                self._json(404, {"error": "admin endpoints: /proxy/health, /proxy/faults, /proxy/outage, "
                                          "/proxy/config, /proxy/stats, /proxy/reset"})

    return Handler


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog is 5: a burst of new connections (a client whose pool is full
    # opens one per request) overflowed it, and each refused SYN cost its caller a 1 s retransmit.
    request_queue_size = 128


def serve(state: ProxyState, host: str, port: int) -> ThreadingHTTPServer:
    """A server (not yet serving) for ``state`` on ``host:port``."""
    server = _Server((host, port), _handler(state))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    """Run the proxy until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m localstack.gcsproxy", description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="fake-gcs-server's URL, http://127.0.0.1:N")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--faults", default=None, help="initial fault configuration (JSON)")
    parser.add_argument("--write-interval", type=float, default=DEFAULT_WRITE_INTERVAL,
                        help="seconds between two accepted writes of one object name (0: no limit)")
    args = parser.parse_args(argv)
    try:
        faults = parse_faults(json.loads(args.faults)) if args.faults else None
    except (ValueError, FaultSpecError) as exc:
        log("ERROR", "fault configuration refused", error=str(exc))
        return 2
    state = ProxyState(args.upstream, faults, args.write_interval)
    server = serve(state, args.host, args.port)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    threading.Thread(target=server.serve_forever, name="serve", daemon=True).start()
    log("INFO", "gcs proxy listening", url=f"http://{args.host}:{args.port}", upstream=args.upstream,
        writeIntervalSeconds=args.write_interval)
    done.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
