"""Watching the local stack from the outside: result messages, store contents, API call counts.

Shared by the demo, the end-to-end tests, the chaos suite and the benchmarks,
which all ask the same questions: which results arrived, what is in the DICOM
store, how many import calls were made, and how many the design allows.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping

import requests

from .pubsub import PubSubRest

SOP_INSTANCE_UID = "00080018"
QIDO_PAGE = 5000


@dataclass(frozen=True)
class Result:
    """One result message: data, attributes, and when this reader received it (epoch seconds)."""

    data: dict[str, Any]
    attributes: dict[str, str]
    received_at: float
    message_id: str


class ResultsReader:
    """Pulls (and acknowledges) result messages from the stack's results subscription."""

    def __init__(self, env: Mapping[str, str], subscription: str | None = None) -> None:
        self.pubsub = PubSubRest(env["PUBSUB_EMULATOR_HOST"])
        self.subscription = subscription or env["RESULTS_SUBSCRIPTION"]
        self.received: list[Result] = []

    def poll(self, wait: float = 1.0) -> list[Result]:
        """Messages available now (waiting up to ``wait`` seconds for the first)."""
        deadline = time.monotonic() + wait
        while True:
            messages = self.pubsub.pull(self.subscription, 1000, wait=False, timeout=30)
            if messages or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if messages:
            self.pubsub.acknowledge(self.subscription, [m["ackId"] for m in messages])
        now = time.time()
        batch = [
            Result(json.loads(base64.b64decode(m["message"].get("data", ""))), dict(m["message"].get("attributes", {})),
                   now, m["message"].get("messageId", ""))
            for m in messages
        ]
        self.received.extend(batch)
        return batch

    def until(self, done: Callable[[list[Result]], bool], timeout: float, quiet: float = 0.0) -> list[Result]:
        """Poll until ``done(all received)`` holds (then ``quiet`` more seconds, to catch duplicates) or timeout."""
        deadline = time.monotonic() + timeout
        while not done(self.received) and time.monotonic() < deadline:
            self.poll(wait=min(1.0, max(0.0, deadline - time.monotonic())))
        end = time.monotonic() + quiet
        while time.monotonic() < end:
            self.poll(wait=min(1.0, end - time.monotonic()))
        return self.received

    def drain(self, quiet: float = 1.0) -> list[Result]:
        """Discard whatever is waiting (results of earlier work)."""
        dropped = []
        while True:
            batch = self.poll(wait=quiet)
            if not batch:
                return dropped
            dropped.extend(batch)


def covered_objects(results: list[Result]) -> int:
    """Objects reported by import results (each batch once, even if its message came twice)."""
    batches = {r.data["batch"]: r.data["objectCount"] for r in results if r.data.get("schema") == "dicom-import-result/v1"}
    return sum(batches.values())


def store_sop_uids(env: Mapping[str, str], store: str | None = None) -> set[str]:
    """SOP Instance UIDs in the DICOM store, through the emulator's QIDO-RS (paged)."""
    url = f"{env['HEALTHCARE_EMULATOR_HOST'].rstrip('/')}/v1/{store or env['DICOM_STORE']}/dicomWeb/instances"
    found: set[str] = set()
    offset = 0
    while True:
        response = requests.get(url, params={"limit": QIDO_PAGE, "offset": offset, "includefield": SOP_INSTANCE_UID},
                                headers={"Accept": "application/dicom+json"}, timeout=60)
        response.raise_for_status()
        page = response.json() if response.content else []
        found.update(item[SOP_INSTANCE_UID]["Value"][0] for item in page)
        if len(page) < QIDO_PAGE:
            return found
        offset += QIDO_PAGE


def api_calls(env: Mapping[str, str]) -> dict[str, int]:
    """Requests per method the Healthcare emulator has served (``/emulator/stats``)."""
    response = requests.get(f"{env['HEALTHCARE_EMULATOR_HOST'].rstrip('/')}/emulator/stats", timeout=10)
    response.raise_for_status()
    return dict(response.json())


def result_object_uris(env: Mapping[str, str], result: Result) -> list[str]:
    """The ``gs://`` URIs an import result covers: listed in the message, or read from its manifest."""
    if result.data.get("objects") is not None:
        return [item["uri"] for item in result.data["objects"]]
    bucket, _, path = result.data["manifest"][len("gs://"):].partition("/")
    response = requests.get(f"{env['STORAGE_EMULATOR_HOST'].rstrip('/')}/storage/v1/b/{bucket}/o/"
                            f"{requests.utils.quote(path, safe='')}", params={"alt": "media"}, timeout=30)
    response.raise_for_status()
    return [f"gs://{m['bucket']}/{m['name']}" for m in response.json()["members"]]


def call_bound(objects: int, max_objects: int, max_wait: float, quiet: float, joins: list[float]) -> int:
    """docs/design.md, "Bounds": ceil(N / max_objects) + 1 for a burst within one window with no gap of the
    quiet time; each gap that long, and each full window the burst spans, may seal one batch more.

    ``joins``: when each object joined its batch, sorted (its claim's time, written just before its
    marker). A gap counts from ``quiet - 1 s`` so that the marker's own latency cannot hide one.
    """
    gaps = sum(1 for earlier, later in zip(joins, joins[1:]) if later - earlier >= quiet - 1.0)
    spanned = int((joins[-1] - joins[0]) // max_wait) if joins else 0
    return -(-objects // max_objects) + 1 + gaps + spanned


def claim_times_by_rule(env: Mapping[str, str]) -> dict[str, list[float]]:
    """When each object joined a batch, by rule, sorted: its claim's ``timeCreated``, from listings alone.

    Every claim in the state bucket counts (the benchmarks' fresh stacks hold only their own drop).
    """
    url = f"{env['STORAGE_EMULATOR_HOST'].rstrip('/')}/storage/v1/b/{env['STATE_BUCKET']}/o"
    times: dict[str, list[float]] = {}
    params = {"prefix": "claims/", "fields": "items(name,timeCreated),nextPageToken"}
    while True:
        response = requests.get(url, params=params, timeout=60)
        response.raise_for_status()
        page = response.json()
        for item in page.get("items", []):
            created = datetime.fromisoformat(item["timeCreated"].replace("Z", "+00:00")).timestamp()
            times.setdefault(item["name"].split("/")[1], []).append(created)
        if not page.get("nextPageToken"):
            return {rule: sorted(found) for rule, found in times.items()}
        params["pageToken"] = page["nextPageToken"]
