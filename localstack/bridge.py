"""The Eventarc / Pub/Sub push stand-in: pull subscriptions in the emulator, POST to HTTP endpoints.

Each route reads one pull subscription and delivers every message to one
endpoint in one of two formats:

* ``storage-cloudevent``: a GCS notification (``eventType=OBJECT_FINALIZE``) becomes
  the binary-mode CloudEvent Eventarc sends for ``google.cloud.storage.object.v1.finalized``
  (``ce-*`` headers, the object resource JSON as body). Other event types are
  acknowledged and counted as skipped: an Eventarc finalize trigger never sees them.
* ``pubsub-push``: the JSON envelope a Pub/Sub push subscription POSTs
  (``{"message": {...}, "subscription": ...}``).

Delivery is at least once: a 2xx answer acknowledges the message; anything else
(status, timeout, refused connection) is logged as a JSON line and retried after
an exponential backoff with jitter, for as long as it takes. While a message is
held (in flight or waiting for its retry) the bridge keeps extending its ack
deadline, so a request may last as long as the route's timeout (600 s by
default) without the emulator redelivering it; if the bridge dies, the emulator
redelivers held messages once their deadline (60 s) passes.

Events can be lost on purpose, as after a trigger's retention expired:
``PUT /events {"drop": F, "seed": N}`` makes the storage routes acknowledge a
fraction F (1: all) of Cloud Storage notifications without delivering them;
``{"drop": 0}`` delivers again (``python -m localstack events drop|deliver``).

Run as ``python -m localstack.bridge --config FILE --port N``; ``GET /status``
returns the counters as JSON, ``GET /health`` answers 200 once the bridge runs.
"""

from __future__ import annotations

import argparse
import base64
import heapq
import itertools
import json
import queue
import random
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from .pubsub import PubSubError, PubSubRest

__all__ = ["FORMATS", "Backoff", "Bridge", "BridgeConfig", "Route", "build_request", "main"]

STORAGE_CLOUDEVENT = "storage-cloudevent"
PUBSUB_PUSH = "pubsub-push"
FORMATS = (STORAGE_CLOUDEVENT, PUBSUB_PUSH)
FINALIZED_TYPE = "google.cloud.storage.object.v1.finalized"


def log(severity: str, message: str, **fields: Any) -> None:
    """Write one JSON log line (``severity``, ``message``, ``time``, fields) to stdout."""
    entry: dict[str, Any] = {
        "severity": severity,
        "message": message,
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "component": "bridge",
    }
    entry.update({key: value for key, value in fields.items() if value is not None})
    sys.stdout.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class Route:
    """One subscription delivered to one endpoint."""

    name: str
    subscription: str  # projects/P/subscriptions/S
    endpoint: str  # http://127.0.0.1:PORT/
    format: str  # storage-cloudevent | pubsub-push
    max_in_flight: int = 32
    timeout: float = 600.0  # seconds one request may take

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"route {self.name}: format {self.format!r} unknown (use one of {', '.join(FORMATS)})")
        if self.max_in_flight < 1:
            raise ValueError(f"route {self.name}: max_in_flight must be at least 1")


@dataclass(frozen=True)
class Backoff:
    """Delay before retry n (n = 1, 2, ...): ``min(maximum, initial * multiplier**(n-1))``, times 1 ± jitter."""

    initial: float = 1.0
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, rand: random.Random | None = None) -> float:
        """Seconds to wait after the ``attempt``-th failed delivery."""
        base = min(self.maximum, self.initial * self.multiplier ** max(0, attempt - 1))
        spread = (rand or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1.0 + spread))


@dataclass(frozen=True)
class BridgeConfig:
    """Everything the bridge process needs (written to a JSON file by the stack)."""

    pubsub_host: str  # 127.0.0.1:PORT
    routes: tuple[Route, ...]
    backoff: Backoff = Backoff()
    ack_deadline: int = 60  # seconds, renewed every ack_deadline / 3 while a message is held
    max_outstanding: int = 1000  # messages held per route (in flight + waiting to retry)

    def write(self, path: Path) -> Path:
        """Write as JSON; return ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def read(cls, path: Path) -> "BridgeConfig":
        """Read a file written by :meth:`write`."""
        data = json.loads(Path(path).read_text())
        return cls(
            pubsub_host=data["pubsub_host"],
            routes=tuple(Route(**route) for route in data["routes"]),
            backoff=Backoff(**data.get("backoff", {})),
            ack_deadline=int(data.get("ack_deadline", 60)),
            max_outstanding=int(data.get("max_outstanding", 1000)),
        )


def build_request(route: Route, received: dict[str, Any]) -> tuple[dict[str, str | bytes], bytes] | None:
    """The headers and body to POST for one pulled message; None if the route skips it.

    ``received`` is a ``receivedMessages`` item of a pull (``ackId``, ``message``).
    """
    message = received["message"]
    attributes: dict[str, str] = dict(message.get("attributes") or {})
    data = base64.b64decode(message.get("data", ""))
    if route.format == PUBSUB_PUSH:
        pushed: dict[str, Any] = {
            "data": message.get("data", ""),
            "messageId": message["messageId"],
            "message_id": message["messageId"],
            "publishTime": message["publishTime"],
            "publish_time": message["publishTime"],
        }
        if attributes:
            pushed["attributes"] = attributes
        body = json.dumps({"message": pushed, "subscription": route.subscription}).encode()
        return {"Content-Type": "application/json"}, body
    if attributes.get("eventType") != "OBJECT_FINALIZE":
        return None
    bucket, name = attributes.get("bucketId"), attributes.get("objectId")
    if not bucket or not name:
        try:
            resource = json.loads(data)
        except ValueError:
            return None
        if not isinstance(resource, dict):
            return None
        bucket, name = resource.get("bucket"), resource.get("name")
    if not (isinstance(bucket, str) and isinstance(name, str) and bucket and name):
        return None
    headers = {
        "ce-specversion": "1.0",
        "ce-type": FINALIZED_TYPE,
        "ce-source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "ce-subject": f"objects/{name}",
        "ce-id": message["messageId"],
        "ce-time": attributes.get("eventTime") or message["publishTime"],
        "Content-Type": "application/json",
    }
    # Header values go out as bytes: a non-ASCII object name is sent as its UTF-8 bytes
    # (the body's "name" is the reliable copy; receivers decode headers as Latin-1).
    return {key: value if value.isascii() else value.encode("utf-8") for key, value in headers.items()}, data


@dataclass
class _Held:
    """A message the bridge holds until it is acknowledged."""

    received: dict[str, Any]
    ack_id: str
    attempts: int = 0

    @property
    def message_id(self) -> str:
        return str(self.received["message"]["messageId"])


@dataclass
class _Counters:
    pulled: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    skipped: int = 0
    in_flight: int = 0
    waiting_retry: int = 0
    redelivered_by_pubsub: int = 0
    ack_errors: int = 0
    pull_errors: int = 0
    dropped: int = 0
    last_error: str | None = None


class _RouteWorker:
    """Pulls one subscription and delivers its messages with at most ``max_in_flight`` requests."""

    def __init__(self, bridge: "Bridge", route: Route) -> None:
        self.bridge = bridge
        self.route = route
        self.pubsub = PubSubRest(bridge.config.pubsub_host)
        self.held: dict[str, _Held] = {}
        self.counters = _Counters()
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)
        self.pool = ThreadPoolExecutor(max_workers=route.max_in_flight, thread_name_prefix=f"deliver-{route.name}")
        self.http = threading.local()
        self.acks: queue.Queue[_Held] = queue.Queue()

    def start(self) -> None:
        threading.Thread(target=self._pull_loop, name=f"pull-{self.route.name}", daemon=True).start()
        threading.Thread(target=self._ack_loop, name=f"ack-{self.route.name}", daemon=True).start()

    # -- pulling ------------------------------------------------------------------
    def _pull_loop(self) -> None:
        failing_since: float | None = None
        pause = 0.2
        while not self.bridge.stopping.is_set():
            with self.room:
                while len(self.held) >= self.bridge.config.max_outstanding and not self.bridge.stopping.is_set():
                    self.room.wait(timeout=1.0)
                room = self.bridge.config.max_outstanding - len(self.held)
            if room <= 0:
                return  # stopping
            try:
                pulled = self.pubsub.pull(self.route.subscription, max_messages=min(room, 100))
            except PubSubError as exc:
                with self.lock:
                    self.counters.pull_errors += 1
                    self.counters.last_error = str(exc)
                if failing_since is None:
                    failing_since = time.monotonic()
                    log("WARNING", "pull failed, retrying", route=self.route.name, subscription=self.route.subscription, error=str(exc))
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            if failing_since is not None:
                log("INFO", "pull recovered", route=self.route.name, outageSeconds=round(time.monotonic() - failing_since, 1))
                failing_since, pause = None, 0.2
            for received in pulled:
                self._accept(received)

    def _accept(self, received: dict[str, Any]) -> None:
        message_id = str(received["message"]["messageId"])
        with self.lock:
            self.counters.pulled += 1
            held = self.held.get(message_id)
            if held is not None:
                # The emulator redelivered a message we still hold (its deadline passed):
                # keep one delivery going and renew with the newest ack ID.
                held.ack_id = received["ackId"]
                self.counters.redelivered_by_pubsub += 1
                return
            held = _Held(received=received, ack_id=received["ackId"])
            self.held[message_id] = held
        self.submit(held)

    # -- delivering ---------------------------------------------------------------
    def submit(self, held: _Held) -> None:
        with self.lock:
            self.counters.in_flight += 1
        try:
            self.pool.submit(self._deliver, held)
        except RuntimeError:  # the bridge is stopping: the message comes back from Pub/Sub after its deadline
            with self.lock:
                self.counters.in_flight -= 1

    def _session(self) -> requests.Session:
        session = getattr(self.http, "session", None)
        if session is None:
            session = requests.Session()
            self.http.session = session
        return session

    def _deliver(self, held: _Held) -> None:
        try:
            self._attempt(held)
        except Exception as exc:  # a bug here must not kill the worker thread silently
            log("ERROR", "delivery crashed", route=self.route.name, messageId=held.message_id, error=repr(exc))
            self._failed(held, None, repr(exc), 0.0)

    def _attempt(self, held: _Held) -> None:
        request = build_request(self.route, held.received)
        if request is None:
            attributes = held.received["message"].get("attributes") or {}
            log("INFO", "event skipped: not an OBJECT_FINALIZE notification naming an object", route=self.route.name,
                messageId=held.message_id, eventType=attributes.get("eventType"), objectId=attributes.get("objectId"))
            with self.lock:
                self.counters.skipped += 1
            self._ack(held)
            return
        if self.route.format == STORAGE_CLOUDEVENT and self.bridge.drop_event():
            attributes = held.received["message"].get("attributes") or {}
            log("WARNING", "event dropped on purpose: acknowledged, never delivered", route=self.route.name,
                messageId=held.message_id, objectId=attributes.get("objectId"))
            with self.lock:
                self.counters.dropped += 1
            self._ack(held)
            return
        headers, body = request
        started = time.monotonic()
        status: int | None = None
        try:
            response = self._session().post(self.route.endpoint, data=body, headers=headers, timeout=(5.0, self.route.timeout))
            status = response.status_code
            error = None if 200 <= status < 300 else f"HTTP {status}: {response.text.strip()[:300]}"
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"
        elapsed = time.monotonic() - started
        if error is None:
            with self.lock:
                self.counters.delivered += 1
            attributes = held.received["message"].get("attributes") or {}
            log("INFO", "delivered", route=self.route.name, messageId=held.message_id, status=status,
                attempt=held.attempts + 1, seconds=round(elapsed, 3), objectId=attributes.get("objectId"))
            self._ack(held)
        else:
            self._failed(held, status, error, elapsed)

    def _failed(self, held: _Held, status: int | None, error: str, elapsed: float) -> None:
        held.attempts += 1
        delay = self.bridge.config.backoff.delay(held.attempts)
        with self.lock:
            self.counters.failed_attempts += 1
            self.counters.in_flight -= 1
            self.counters.waiting_retry += 1
            self.counters.last_error = error
        attributes = held.received["message"].get("attributes") or {}
        log("WARNING", "delivery failed, will retry", route=self.route.name, endpoint=self.route.endpoint,
            messageId=held.message_id, objectId=attributes.get("objectId"), attempt=held.attempts, status=status,
            error=error, seconds=round(elapsed, 3), retryInSeconds=round(delay, 3))
        self.bridge.schedule(time.monotonic() + delay, self, held)

    def retry(self, held: _Held) -> None:
        with self.lock:
            self.counters.waiting_retry -= 1
        self.submit(held)

    def _ack(self, held: _Held) -> None:
        """The request is over: queue the acknowledgement (sent in batches by :meth:`_ack_loop`)."""
        with self.lock:
            self.counters.in_flight -= 1
        self.acks.put(held)

    def _ack_loop(self) -> None:
        while True:
            batch = [self.acks.get()]
            time.sleep(0.02)  # let acknowledgements of concurrent deliveries join this call
            while len(batch) < 1000:
                try:
                    batch.append(self.acks.get_nowait())
                except queue.Empty:
                    break
            try:
                self.pubsub.acknowledge(self.route.subscription, [held.ack_id for held in batch])
            except PubSubError as exc:
                # These messages come back after their deadline: at least once, as in production.
                with self.lock:
                    self.counters.ack_errors += len(batch)
                log("WARNING", "acknowledge failed; the messages may be delivered again", route=self.route.name,
                    messageIds=[held.message_id for held in batch], error=str(exc))
            with self.room:
                for held in batch:
                    self.held.pop(held.message_id, None)
                self.room.notify()

    # -- leases and status --------------------------------------------------------
    def renew_leases(self) -> None:
        with self.lock:
            ack_ids = [held.ack_id for held in self.held.values()]
        for start in range(0, len(ack_ids), 500):
            try:
                self.pubsub.modify_ack_deadline(self.route.subscription, ack_ids[start : start + 500], self.bridge.config.ack_deadline)
            except PubSubError as exc:
                log("WARNING", "ack deadline renewal failed", route=self.route.name, messages=len(ack_ids), error=str(exc))
                return

    def status(self) -> dict[str, Any]:
        with self.lock:
            counters = asdict(self.counters)
            counters["held"] = len(self.held)
        counters.update(subscription=self.route.subscription, endpoint=self.route.endpoint, format=self.route.format)
        return counters


class Bridge:
    """All routes of one :class:`BridgeConfig`, their retry scheduler and lease renewal."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        self.workers = {route.name: _RouteWorker(self, route) for route in config.routes}
        self._retries: list[tuple[float, int, _RouteWorker, _Held]] = []
        self._retry_seq = itertools.count()
        self._retry_ready = threading.Condition()
        self._drop_lock = threading.Lock()
        self._drop_fraction = 0.0
        self._drop_seed: int | None = None
        self._drop_random = random.Random()

    def set_drop(self, fraction: float, seed: int | None = None) -> None:
        """Lose this fraction of Cloud Storage notifications from now on (0: deliver every one)."""
        with self._drop_lock:
            self._drop_fraction, self._drop_seed = fraction, seed
            self._drop_random = random.Random(seed)
        log("WARNING" if fraction else "INFO", "events mode changed", drop=fraction, seed=seed)

    def events_mode(self) -> dict[str, Any]:
        with self._drop_lock:
            return {"drop": self._drop_fraction, "seed": self._drop_seed}

    def drop_event(self) -> bool:
        """Whether to lose the notification at hand (drawn with the configured fraction)."""
        with self._drop_lock:
            return self._drop_fraction > 0 and self._drop_random.random() < self._drop_fraction

    def start(self) -> None:
        """Start pulling every route (threads are daemons)."""
        for worker in self.workers.values():
            worker.start()
        threading.Thread(target=self._retry_loop, name="retries", daemon=True).start()
        threading.Thread(target=self._lease_loop, name="leases", daemon=True).start()
        log("INFO", "bridge started", pubsubHost=self.config.pubsub_host,
            routes=[asdict(route) for route in self.config.routes], backoff=asdict(self.config.backoff))

    def stop(self) -> None:
        """Stop pulling, retrying and delivering (held messages come back from Pub/Sub after their deadline)."""
        self.stopping.set()
        with self._retry_ready:
            self._retry_ready.notify_all()
        for worker in self.workers.values():
            worker.pool.shutdown(wait=False, cancel_futures=True)  # queued deliveries would outlive "stopped"

    def schedule(self, due: float, worker: _RouteWorker, held: _Held) -> None:
        """Deliver ``held`` again at monotonic time ``due``."""
        with self._retry_ready:
            heapq.heappush(self._retries, (due, next(self._retry_seq), worker, held))
            self._retry_ready.notify()

    def _retry_loop(self) -> None:
        while not self.stopping.is_set():
            with self._retry_ready:
                while not self.stopping.is_set():
                    now = time.monotonic()
                    if self._retries and self._retries[0][0] <= now:
                        _, _, worker, held = heapq.heappop(self._retries)
                        break
                    self._retry_ready.wait(timeout=(self._retries[0][0] - now) if self._retries else 1.0)
                else:
                    return
            worker.retry(held)

    def _lease_loop(self) -> None:
        interval = max(1.0, self.config.ack_deadline / 3)
        while not self.stopping.wait(interval):
            for worker in self.workers.values():
                worker.renew_leases()

    def status(self) -> dict[str, Any]:
        """Counters per route: pulled, delivered, failed_attempts, skipped, in_flight, waiting_retry, held..."""
        routes = {name: worker.status() for name, worker in self.workers.items()}
        return {
            "started": self.started_at,
            "events": self.events_mode(),
            "routes": routes,
            "delivered": sum(route["delivered"] for route in routes.values()),
            "failed_attempts": sum(route["failed_attempts"] for route in routes.values()),
        }


def _status_server(bridge: Bridge, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/status":
                self._send(200, bridge.status())
            elif self.path == "/events":
                self._send(200, bridge.events_mode())
            else:
                self._send(404, {"error": "GET /status, /health or /events; PUT /events"})

        def do_PUT(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except ValueError:
                body = None
            if self.path != "/events":
                self._send(404, {"error": "PUT /events only"})
                return
            fraction = body.get("drop") if isinstance(body, dict) else None
            seed = body.get("seed") if isinstance(body, dict) else None
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1 \
                    or not (seed is None or (isinstance(seed, int) and not isinstance(seed, bool))):
                self._send(400, {"error": 'events needs {"drop": F} with 0 <= F <= 1 (1: lose every notification, '
                                          '0: deliver every one), and an optional integer "seed"'})
                return
            bridge.set_drop(float(fraction), seed)
            self._send(200, bridge.events_mode())

        def _send(self, code: int, data: Any) -> None:
            body = (json.dumps(data, indent=2) + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    """Run the bridge until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m localstack.bridge", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="JSON written by BridgeConfig.write")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", required=True, type=int, help="port of GET /status and GET /health")
    args = parser.parse_args(argv)
    bridge = Bridge(BridgeConfig.read(args.config))
    server = _status_server(bridge, args.host, args.port)
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bridge.start()
    threading.Thread(target=server.serve_forever, name="status", daemon=True).start()
    done.wait()
    bridge.stop()
    log("INFO", "bridge stopped", status=bridge.status())
    return 0


if __name__ == "__main__":
    sys.exit(main())
