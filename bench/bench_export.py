"""How long an export's result waits on its record: the real ExportJob against fake-gcs-server behind the proxy.

Cloud Storage takes about one write per second to one object name (the local
stack's Cloud Storage proxy enforces it, 429 beyond), and an export's record
is one name. This runs the real export job (handlers.exports.job) on a state
bucket in fake-gcs-server through that proxy, with an in-memory Healthcare API
whose export operations end at once and an in-memory Pub/Sub, one request after
another, and prints per request: the record's writes, the seconds from the
request to its result's publication, and to the job's return.

    .venv/bin/python bench/bench_export.py [--requests 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from handlers import log  # noqa: E402
from handlers.batch.reporting import Reporter  # noqa: E402
from handlers.clients.healthcare import Operation  # noqa: E402
from handlers.clients.storage import GcsStateStore, storage_client  # noqa: E402
from handlers.exports.job import ExportJob  # noqa: E402
from handlers.exports.request import ExportRequest  # noqa: E402
from handlers.retry import Deadline  # noqa: E402
from localstack.services import start_fake_gcs, start_gcs_proxy  # noqa: E402
from tests.fakes import FakeApi, FakePublisher  # noqa: E402

STATE = "export-bench-state"
STORE = "projects/p/locations/l/datasets/d/dicomStores/s"


class InstantApi(FakeApi):
    """Export operations that are done as soon as they are started (the operation's own time is not measured)."""

    def export_dicom(self, store: str, body: Mapping[str, Any], deadline: Deadline) -> Operation:
        operation = super().export_dicom(store, body, deadline)
        self.finish(operation.name, success=1)
        return operation


class CountingStore(GcsStateStore):
    """The state bucket, counting writes (create and replace) per object name."""

    def __init__(self, bucket: str) -> None:
        super().__init__(bucket)
        self.writes: Counter[str] = Counter()

    def create(self, path: str, data: Mapping[str, Any]) -> int:
        self.writes[path] += 1
        return super().create(path, data)

    def replace(self, path: str, data: Mapping[str, Any], generation: int) -> int:
        self.writes[path] += 1
        return super().replace(path, data, generation)


class TimedPublisher(FakePublisher):
    """Notes when each result is published."""

    def __init__(self) -> None:
        super().__init__()
        self.published_at: list[float] = []

    def publish(self, topic: str, data: Mapping[str, Any], attributes: Mapping[str, str]) -> str:
        self.published_at.append(time.monotonic())
        return super().publish(topic, data, attributes)


def one_request(store: CountingStore, proxy: str, index: int) -> dict[str, float]:
    publisher = TimedPublisher()
    job = ExportJob(store, InstantApi(), Reporter(store, publisher, "projects/p/topics/results"),
                    destinations=("gs://exports-bkt/",))
    request_id = f"bench-{int(time.time())}-{index}"
    request = ExportRequest.build(store=STORE, destination=f"gs://exports-bkt/{request_id}", request_id=request_id)
    requests.post(f"{proxy}/proxy/reset", timeout=10).raise_for_status()
    started = time.monotonic()
    job.run(request, Deadline(60))
    returned = time.monotonic()
    limited = requests.get(f"{proxy}/proxy/stats", timeout=10).json()["rateLimited"]
    return {"published s": publisher.published_at[0] - started, "returned s": returned - started,
            "record writes": float(store.writes[job.record_path(request)]), "429": float(sum(limited.values()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5, help="export requests, one after another")
    args = parser.parse_args()
    log.redirect(open(os.devnull, "w"))  # noqa: SIM115 - the job's log lines are not the output
    with tempfile.TemporaryDirectory(prefix="bench-export-") as workdir:
        gcs = start_fake_gcs(Path(workdir))
        proxy = start_gcs_proxy(Path(workdir), upstream=gcs.url)
        try:
            requests.post(f"{gcs.url}/storage/v1/b", json={"name": STATE}, timeout=10)
            os.environ["STORAGE_EMULATOR_HOST"] = proxy.url
            storage_client()  # the client reads the variable at creation
            store = CountingStore(STATE)
            rows = [one_request(store, proxy.url, index) for index in range(args.requests)]
        finally:
            proxy.stop()
            gcs.stop()
    columns = ("published s", "returned s", "record writes", "429")
    print("export requests through the Cloud Storage proxy (one write per second per name), operations done at once")
    print(" | ".join(f"{c:>13}" for c in ("request", *columns)))
    for index, row in enumerate(rows):
        print(" | ".join([f"{index:>13}", *(f"{row[c]:>13.2f}" for c in columns)]))
    print(" | ".join([f"{'median':>13}", *(f"{statistics.median(r[c] for r in rows):>13.2f}" for c in columns)]))


if __name__ == "__main__":
    main()
