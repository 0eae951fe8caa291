"""The composed stack: environment, resources, and events from fake-gcs-server through the bridge
to functions-framework processes (a recording stand-in for main.py), including failures."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from localstack.bridge import Backoff
from localstack.names import CONTRACT_KEYS, REPO_ROOT, Names
from localstack.pubsub import PubSubRest
from localstack.stack import Stack, read_env_file

pytestmark = pytest.mark.stack

RECORDING_FUNCTION = Path(__file__).with_name("recording_function.py")


class Recorded:
    """The stack plus what its functions received."""

    def __init__(self, stack: Stack, record_file: Path, fail_file: Path) -> None:
        self.stack, self.record_file, self.fail_file = stack, record_file, fail_file
        self.env = stack.env
        self.storage = storage.Client(
            project=stack.names.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.env["STORAGE_EMULATOR_HOST"]},
        )
        self.pubsub = PubSubRest(self.env["PUBSUB_EMULATOR_HOST"])

    def received(self) -> list[dict]:
        if not self.record_file.exists():
            return []
        return [json.loads(line) for line in self.record_file.read_text().splitlines()]

    def wait_for(self, match: Callable[[dict], bool], count: int = 1, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(found := [entry for entry in self.received() if match(entry)]) < count:
            assert time.monotonic() < deadline, f"{len(found)} of {count} events after {timeout} s"
            time.sleep(0.05)
        return found

    def route(self, name: str) -> dict:
        return self.stack.bridge_status()["routes"][name]

    def upload(self, name: str, bucket: str | None = None) -> None:
        self.storage.bucket(bucket or self.env["INBOX_BUCKET"]).blob(name).upload_from_string(b"DICM?")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, stack_owner: tuple[int, int]) -> Iterator[Recorded]:
    workdir = tmp_path_factory.mktemp("recorded-stack")
    record_file, fail_file = workdir / "received.jsonl", workdir / "fail"
    stack = Stack(
        workdir / "stack",
        source=RECORDING_FUNCTION,
        function_env={"RECORD_FILE": str(record_file), "FAIL_FILE": str(fail_file)},
        backoff=Backoff(initial=0.2, maximum=1.0),
        owner=stack_owner,
    )
    try:
        stack.start()
        yield Recorded(stack, record_file, fail_file)
    finally:
        stack.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_env_holds_every_contract_key_and_matches_stack_env(recorded: Recorded) -> None:
    env, names = recorded.env, Names()
    assert set(CONTRACT_KEYS) <= set(env)
    assert read_env_file(recorded.stack.env_path) == env
    assert env["GOOGLE_CLOUD_PROJECT"] == "local-project"
    assert env["DICOM_STORE"] == "projects/local-project/locations/us-central1/datasets/local-dataset/dicomStores/local-store"
    assert env["RESULTS_TOPIC"] == "projects/local-project/topics/dicom-import-results"
    assert env["RESULTS_SUBSCRIPTION"] == "projects/local-project/subscriptions/dicom-import-results-tail"
    assert (env["INBOX_BUCKET"], env["STATE_BUCKET"], env["EXPORT_BUCKET"]) == names.buckets
    assert env["PUBSUB_EMULATOR_HOST"].startswith("127.0.0.1:")
    assert env["LOGGING_EMULATOR_HOST"] == env["HEALTHCARE_EMULATOR_HOST"], "one emulator serves both APIs"
    for key in ("STORAGE_EMULATOR_HOST", "HEALTHCARE_EMULATOR_HOST", "BRIDGE_URL", "FAKE_GCS_URL"):
        assert env[key].startswith("http://127.0.0.1:") and not env[key].endswith("/")
    for key in ("FUNCTION_URL", "FOLLOWUP_URL", "EXPORT_URL"):
        assert env[key].startswith("http://127.0.0.1:") and env[key].endswith("/")
    ports = {value.rstrip("/").rsplit(":", 1)[1] for key, value in env.items() if "127.0.0.1:" in value}
    assert len(ports) == 8  # pubsub, gcs, its proxy, healthcare, three functions, bridge: a port each
    assert env["STORAGE_EMULATOR_HOST"] == recorded.stack.gcs_proxy.url != env["FAKE_GCS_URL"]
    assert Path(env["DICOM_IMPORT_CONFIG"]).is_file()


def test_every_resource_exists(recorded: Recorded) -> None:
    env, names = recorded.env, Names()
    for bucket in names.buckets:
        assert requests.get(f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{bucket}", timeout=5).status_code == 200
    for topic in names.topics:
        assert recorded.pubsub.exists(names.topic_path(topic))
    tail = recorded.pubsub.call("GET", env["RESULTS_SUBSCRIPTION"])
    assert tail["topic"] == env["RESULTS_TOPIC"]
    for subscription in names.subscriptions:
        assert recorded.pubsub.exists(names.subscription_path(subscription))
    store = requests.get(f"{env['HEALTHCARE_EMULATOR_HOST']}/v1/{env['DICOM_STORE']}", timeout=5)
    assert store.status_code == 200 and store.json()["name"] == env["DICOM_STORE"]


def test_an_inbox_upload_reaches_the_function_as_an_eventarc_cloudevent(recorded: Recorded) -> None:
    name = f"{unique('study')}/series 1/img #1.dcm"
    recorded.upload(name, recorded.env["STATE_BUCKET"])  # not the inbox: no event
    recorded.upload(name)
    (event,) = recorded.wait_for(lambda entry: entry["data"].get("name") == name)
    assert event["entry_point"] == "on_object_finalized"
    attributes = event["attributes"]
    assert attributes["type"] == "google.cloud.storage.object.v1.finalized"
    assert attributes["source"] == "//storage.googleapis.com/projects/_/buckets/dicom-inbox"
    assert attributes["subject"] == f"objects/{name}"
    assert attributes["specversion"] == "1.0" and attributes["id"] and attributes["time"]
    assert event["data"]["bucket"] == "dicom-inbox" and event["data"]["size"] == "5"
    time.sleep(0.5)
    assert [entry["data"]["bucket"] for entry in recorded.received() if entry["data"].get("name") == name] == ["dicom-inbox"]


@pytest.mark.parametrize(
    "topic_key, entry_point", [("FOLLOWUP_TOPIC", "on_followup"), ("EXPORT_REQUESTS_TOPIC", "on_export_request")]
)
def test_topic_messages_reach_their_function_as_messagepublished(recorded: Recorded, topic_key: str, entry_point: str) -> None:
    payload = json.dumps({"marker": unique(entry_point)}).encode()
    recorded.pubsub.publish(recorded.env[topic_key], payload, {"kind": "test"})

    def is_it(entry: dict) -> bool:
        message = entry["data"].get("message") or {}
        return base64.b64decode(message.get("data", "")) == payload

    (event,) = recorded.wait_for(is_it)
    assert event["entry_point"] == entry_point
    assert event["attributes"]["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert event["data"]["message"]["attributes"] == {"kind": "test"}


def test_a_failing_function_gets_the_event_again_until_it_succeeds(recorded: Recorded) -> None:
    failed_before = recorded.route("function")["failed_attempts"]
    recorded.fail_file.touch()
    try:
        name = f"{unique('retry')}.dcm"
        recorded.upload(name)
        deadline = time.monotonic() + 20
        while recorded.route("function")["failed_attempts"] < failed_before + 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        recorded.fail_file.unlink()
    assert len(recorded.wait_for(lambda entry: entry["data"].get("name") == name)) == 1


def test_a_killed_function_loses_no_event_once_restarted(recorded: Recorded) -> None:
    function = recorded.stack.functions["function"]
    port = function.port
    function.kill()
    prefix = unique("while-down")
    for number in range(3):
        recorded.upload(f"{prefix}/{number}.dcm")
    deadline = time.monotonic() + 20
    while recorded.route("function")["waiting_retry"] < 3:
        assert time.monotonic() < deadline, recorded.route("function")
        time.sleep(0.1)
    function.start(port_wait=10)
    assert function.port == port
    events = recorded.wait_for(lambda entry: entry["data"].get("name", "").startswith(prefix + "/"), count=3)
    assert sorted(event["data"]["name"] for event in events) == [f"{prefix}/{n}.dcm" for n in range(3)]


def test_pubsub_emulator_restart_recreates_topics_and_delivery_resumes(recorded: Recorded) -> None:
    recorded.stack.stop_service("pubsub")
    time.sleep(1.0)
    recorded.stack.start_service("pubsub")
    assert recorded.pubsub.exists(recorded.env["RESULTS_SUBSCRIPTION"])
    name = f"{unique('after-outage')}.dcm"
    recorded.upload(name)
    recorded.wait_for(lambda entry: entry["data"].get("name") == name, timeout=30)
    assert recorded.route("function")["pull_errors"] > 0  # the bridge saw the outage and recovered


def test_delivery_goes_on_while_pubsub_is_paused_and_acks_land_after(recorded: Recorded) -> None:
    # An outage that keeps state (SIGSTOP, then SIGCONT): a held message is still delivered, and
    # its acknowledgement waits for the emulator instead of being lost.
    followup = recorded.stack.functions["followup"]
    followup.kill()
    failed_before = recorded.route("followup")["failed_attempts"]
    payload = json.dumps({"marker": unique("paused")}).encode()
    recorded.pubsub.publish(recorded.env["FOLLOWUP_TOPIC"], payload)
    deadline = time.monotonic() + 20
    while recorded.route("followup")["failed_attempts"] == failed_before:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    def is_it(entry: dict) -> bool:
        return base64.b64decode((entry["data"].get("message") or {}).get("data", "")) == payload

    recorded.stack.pubsub.pause()
    try:
        followup.start(port_wait=10)
        recorded.wait_for(is_it, timeout=20)
        assert recorded.route("followup")["held"] >= 1  # delivered, not yet acknowledged
    finally:
        recorded.stack.pubsub.resume()
    deadline = time.monotonic() + 30
    while recorded.route("followup")["held"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert recorded.route("followup")["ack_errors"] == 0
    assert len([entry for entry in recorded.received() if is_it(entry)]) == 1


def localstack_cli(recorded: Recorded, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localstack", "--workdir", str(recorded.stack.workdir), *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_events_drop_loses_notifications_for_good_and_deliver_brings_delivery_back(recorded: Recorded) -> None:
    dropped_before = recorded.route("function")["dropped"]
    assert localstack_cli(recorded, "events", "drop").returncode == 0
    try:
        lost = f"{unique('lost')}.dcm"
        recorded.upload(lost)
        deadline = time.monotonic() + 20
        while recorded.route("function")["dropped"] == dropped_before:
            assert time.monotonic() < deadline, recorded.route("function")
            time.sleep(0.1)
        assert recorded.stack.bridge_status()["events"] == {"drop": 1.0, "seed": None}
    finally:
        shown = localstack_cli(recorded, "events", "deliver")
    assert shown.returncode == 0 and json.loads(shown.stdout)["drop"] == 0.0
    kept = f"{unique('kept')}.dcm"
    recorded.upload(kept)
    recorded.wait_for(lambda entry: entry["data"].get("name") == kept)
    time.sleep(1.0)
    assert not [entry for entry in recorded.received() if entry["data"].get("name") == lost], "lost for good"
    assert recorded.route("function")["held"] == 0, "acknowledged: Pub/Sub will not deliver it again"


def test_a_fraction_of_events_can_be_lost(recorded: Recorded) -> None:
    bridge = recorded.env["BRIDGE_URL"]
    before = recorded.route("function")
    requests.put(f"{bridge}/events", json={"drop": 0.5, "seed": 3}, timeout=5).raise_for_status()
    try:
        prefix = unique("half")
        for number in range(20):
            recorded.upload(f"{prefix}/{number}.dcm")
        deadline = time.monotonic() + 30
        while recorded.route("function")["dropped"] + recorded.route("function")["delivered"] \
                < before["dropped"] + before["delivered"] + 20:
            assert time.monotonic() < deadline, recorded.route("function")
            time.sleep(0.1)
    finally:
        requests.put(f"{bridge}/events", json={"drop": 0}, timeout=5).raise_for_status()
    dropped = recorded.route("function")["dropped"] - before["dropped"]
    assert 3 <= dropped <= 17, f"{dropped} of 20 lost with drop 0.5"
    assert requests.put(f"{bridge}/events", json={"drop": 2}, timeout=5).status_code == 400


def test_the_functions_reach_cloud_storage_through_the_fault_proxy(recorded: Recorded) -> None:
    assert localstack_cli(recorded, "faults", "gcs", "outage", "2").returncode == 0
    name = f"{unique('through-proxy')}.dcm"
    with pytest.raises(Exception, match="503"):
        recorded.storage.bucket(recorded.env["INBOX_BUCKET"]).blob(name).upload_from_string(b"x", retry=None)
    shown = localstack_cli(recorded, "faults", "gcs", "show")
    assert shown.returncode == 0 and '"remainingSeconds"' in shown.stdout
    assert localstack_cli(recorded, "faults", "gcs", "clear").returncode == 0
    recorded.upload(name)  # the outage is over
    stats = requests.get(f"{recorded.env['STORAGE_EMULATOR_HOST']}/proxy/stats", timeout=5).json()
    assert stats["outageRefused"] >= 1 and stats["requests"]["objects.insert"] >= 1
    refused = localstack_cli(recorded, "faults", "gcs", "set", "--rate503", "1.5")
    assert refused.returncode == 2 and "rate503" in refused.stderr
