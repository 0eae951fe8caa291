"""The bridge (Eventarc / Pub/Sub push stand-in) against the real Pub/Sub emulator and a recording server."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from localstack.bridge import Backoff, BridgeConfig, Route
from localstack.ports import free_port
from localstack.pubsub import PubSubRest
from localstack.services import Service, start_bridge

from .recorder import Recorder

pytestmark = pytest.mark.stack

FAST = Backoff(initial=0.3, maximum=2.0, multiplier=2.0, jitter=0.2)


class Bridged:
    """A topic, its subscription and a bridge process delivering it to one endpoint."""

    def __init__(self, pubsub: PubSubRest, topic: str, subscription: str, service: Service) -> None:
        self.pubsub, self.topic, self.subscription, self.service = pubsub, topic, subscription, service

    def publish(self, data: bytes, attributes: dict[str, str] | None = None) -> str:
        return self.pubsub.publish(self.topic, data, attributes)

    def status(self) -> dict:
        return requests.get(f"{self.service.url}/status", timeout=5).json()["routes"]["route"]

    def log_entries(self) -> list[dict]:
        lines = self.service.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if not line.startswith("=== ")]


@pytest.fixture
def bridged(pubsub_emulator: Service, tmp_path: Path, stack_owner: tuple[int, int]) -> Iterator[Callable[..., Bridged]]:
    """Factory: ``bridged(endpoint, format, backoff=..., ack_deadline=..., max_in_flight=...)``."""
    services: list[Service] = []
    pubsub = PubSubRest(pubsub_emulator.host)

    def make(endpoint: str, fmt: str, *, backoff: Backoff = FAST, ack_deadline: int = 60, max_in_flight: int = 32) -> Bridged:
        suffix = uuid.uuid4().hex[:10]
        topic = f"projects/bridge-tests/topics/topic-{suffix}"
        subscription = f"projects/bridge-tests/subscriptions/sub-{suffix}"
        pubsub.create_topic(topic)
        pubsub.create_subscription(subscription, topic, ack_deadline)
        route = Route("route", subscription, endpoint, fmt, max_in_flight=max_in_flight, timeout=600.0)
        config = BridgeConfig(pubsub_emulator.host, (route,), backoff=backoff, ack_deadline=ack_deadline)
        workdir = tmp_path / suffix
        service = start_bridge(workdir, config_path=config.write(workdir / "bridge.json"), owner=stack_owner)
        services.append(service)
        return Bridged(pubsub, topic, subscription, service)

    yield make
    for service in services:
        service.stop()


def gcs_notification(bucket: str, name: str, event_type: str = "OBJECT_FINALIZE") -> tuple[bytes, dict[str, str]]:
    """A notification as Cloud Storage (and fake-gcs-server) publishes it."""
    resource = {
        "kind": "storage#object",
        "id": f"{bucket}/{name}#1700000000000001",
        "name": name,
        "bucket": bucket,
        "generation": "1700000000000001",
        "metageneration": "1",
        "contentType": "application/dicom",
        "size": "1234",
        "timeCreated": "2026-01-02T03:04:05.678Z",
        "updated": "2026-01-02T03:04:05.678Z",
        "storageClass": "STANDARD",
    }
    attributes = {
        "eventType": event_type,
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": "1700000000000001",
        "eventTime": "2026-01-02T03:04:05.678901Z",
        "payloadFormat": "JSON_API_V1",
        "notificationConfig": "projects/_/buckets/inbox/notificationConfigs/1",
    }
    return json.dumps(resource).encode(), attributes


def test_storage_notification_becomes_the_eventarc_cloudevent(bridged: Callable[..., Bridged]) -> None:
    with Recorder() as recorder:
        bridge = bridged(recorder.url, "storage-cloudevent")
        data, attributes = gcs_notification("inbox", "study 1/series/é#1.dcm")
        message_id = bridge.publish(data, attributes)
        (request,) = recorder.wait_for(1)
    assert request.path == "/"
    ce = {name: value for name, value in request.headers.items() if name.startswith("ce-")}
    assert ce == {
        "ce-specversion": "1.0",
        "ce-type": "google.cloud.storage.object.v1.finalized",
        "ce-source": "//storage.googleapis.com/projects/_/buckets/inbox",
        "ce-subject": "objects/study 1/series/é#1.dcm".encode().decode("latin-1"),  # UTF-8 bytes on the wire
        "ce-id": message_id,
        "ce-time": "2026-01-02T03:04:05.678901Z",
    }
    assert request.headers["content-type"] == "application/json"
    assert request.body == data  # the object resource, byte for byte


def test_only_finalize_notifications_are_delivered(bridged: Callable[..., Bridged]) -> None:
    with Recorder() as recorder:
        bridge = bridged(recorder.url, "storage-cloudevent")
        bridge.publish(b"not an object resource", {"eventType": "OBJECT_FINALIZE"})  # names no object
        bridge.publish(b'{"bucket": 1, "name": 2}', {"eventType": "OBJECT_FINALIZE"})  # nor does this
        for event_type in ("OBJECT_DELETE", "OBJECT_METADATA_UPDATE", "OBJECT_FINALIZE"):
            data, attributes = gcs_notification("inbox", f"{event_type}.dcm", event_type)
            bridge.publish(data, attributes)
        (request,) = recorder.wait_for(1)
        time.sleep(0.5)
        assert len(recorder.requests) == 1
    assert request.headers["ce-subject"] == "objects/OBJECT_FINALIZE.dcm"
    status = bridge.status()
    assert (status["skipped"], status["delivered"], status["failed_attempts"], status["held"]) == (4, 1, 0, 0)


def test_pubsub_push_envelope(bridged: Callable[..., Bridged]) -> None:
    with Recorder() as recorder:
        bridge = bridged(recorder.url, "pubsub-push")
        with_attributes = bridge.publish(b'{"batch": "b-1"}', {"kind": "followup", "attempt": "2"})
        (first,) = recorder.wait_for(1)
        bare = bridge.publish(b"plain bytes \x00\xff")
        second = recorder.wait_for(2)[1]
    envelope = json.loads(first.body)
    assert first.headers["content-type"] == "application/json"
    assert set(envelope) == {"message", "subscription"}
    assert envelope["subscription"] == bridge.subscription
    message = envelope["message"]
    assert set(message) == {"data", "attributes", "messageId", "message_id", "publishTime", "publish_time"}
    assert base64.b64decode(message["data"]) == b'{"batch": "b-1"}'
    assert message["attributes"] == {"kind": "followup", "attempt": "2"}
    assert message["messageId"] == message["message_id"] == with_attributes
    assert message["publishTime"] == message["publish_time"]
    assert message["publishTime"].endswith("Z")
    bare_message = json.loads(second.body)["message"]
    assert "attributes" not in bare_message
    assert base64.b64decode(bare_message["data"]) == b"plain bytes \x00\xff"
    assert bare_message["messageId"] == bare


def test_redelivers_with_exponential_backoff_until_2xx(bridged: Callable[..., Bridged]) -> None:
    with Recorder(lambda request, index: (500 if index < 3 else 204, 0.0)) as recorder:
        bridge = bridged(recorder.url, "storage-cloudevent")
        data, attributes = gcs_notification("inbox", "retry.dcm")
        bridge.publish(data, attributes)
        attempts = recorder.wait_for(4)
        time.sleep(1.5)  # acknowledged: nothing more comes
        assert len(recorder.requests) == 4
    assert len({request.headers["ce-id"] for request in attempts}) == 1  # the same event each time
    gaps = [later.at - earlier.at for earlier, later in zip(attempts, attempts[1:])]
    for gap, base in zip(gaps, (0.3, 0.6, 1.2)):
        assert base * 0.8 - 0.02 <= gap <= base * 1.2 + 0.5, gaps
    status = bridge.status()
    assert (status["delivered"], status["failed_attempts"], status["held"], status["in_flight"]) == (1, 3, 0, 0)
    failures = [entry for entry in bridge.log_entries() if entry["message"] == "delivery failed, will retry"]
    assert [entry["attempt"] for entry in failures] == [1, 2, 3]
    assert all(entry["severity"] == "WARNING" and entry["status"] == 500 for entry in failures)
    assert all(entry["objectId"] == "retry.dcm" and entry["retryInSeconds"] > 0 for entry in failures)
    assert all({"severity", "message", "time"} <= set(entry) for entry in bridge.log_entries())


def test_refused_connections_are_retried_until_the_endpoint_comes_back(bridged: Callable[..., Bridged]) -> None:
    port = free_port()
    bridge = bridged(f"http://127.0.0.1:{port}/", "pubsub-push")
    bridge.publish(b"waiting")
    deadline = time.monotonic() + 10
    while bridge.status()["failed_attempts"] < 2:
        assert time.monotonic() < deadline, bridge.status()
        time.sleep(0.1)
    with Recorder(port=port) as recorder:  # the function process is back on its port
        (request,) = recorder.wait_for(1, timeout=10)
    assert base64.b64decode(json.loads(request.body)["message"]["data"]) == b"waiting"
    assert "ConnectionError" in bridge.status()["last_error"]


def test_at_most_max_in_flight_requests_per_route(bridged: Callable[..., Bridged]) -> None:
    with Recorder(lambda request, index: (200, 0.5)) as recorder:
        bridge = bridged(recorder.url, "pubsub-push", max_in_flight=4)
        for number in range(12):
            bridge.publish(str(number).encode())
        requests_ = recorder.wait_for(12)
    assert recorder.max_in_flight == 4
    assert sorted(base64.b64decode(json.loads(r.body)["message"]["data"]) for r in requests_) == sorted(
        str(n).encode() for n in range(12)
    )


@pytest.mark.slow
def test_a_request_longer_than_the_ack_deadline_is_delivered_once(bridged: Callable[..., Bridged]) -> None:
    # The follow-up function holds a request for a minute or two: the bridge must keep the
    # message leased, or the emulator would redeliver it while the first request still runs.
    with Recorder(lambda request, index: (200, 14.0)) as recorder:
        bridge = bridged(recorder.url, "pubsub-push", ack_deadline=10)
        bridge.publish(b"slow")
        recorder.wait_for(1)
        deadline = time.monotonic() + 25
        while bridge.status()["delivered"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert len(recorder.requests) == 1
    status = bridge.status()
    assert (status["redelivered_by_pubsub"], status["failed_attempts"]) == (0, 0)


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(initial=1.0, maximum=30.0, multiplier=2.0, jitter=0.2)
    delays = [backoff.delay(attempt) for attempt in range(1, 12)]
    assert 0.8 <= delays[0] <= 1.2 and 1.6 <= delays[1] <= 2.4
    assert all(24.0 <= delay <= 36.0 for delay in delays[6:])  # 64 s capped at 30 s, ±20 %
    assert len({round(backoff.delay(3), 6) for _ in range(20)}) > 1  # jittered
