"""How many objects per second one rule can take before Cloud Storage's one-write-per-second limit bites.

Every batch rewrites objects of a fixed name: the rule's lease at least. Cloud
Storage accepts about one write per second per object name (429 beyond it). This
drives the real intake and driver code (handlers.batch) at a steady arrival rate
against fake-gcs-server through the local stack's Cloud Storage proxy, which
enforces that limit; Pub/Sub and the Healthcare API are in-memory stand-ins (a
driver thread per batch, as the follow-up function would run it). For each rate
it prints the rate achieved, the batches and their sizes, how many writes the
proxy refused with 429 (the lease's and all), and the admission latency.

The limit caps a rule at about ``max_objects / (lease writes per batch)`` batches'
worth of objects per second only if consecutive lease writes are at least a
second apart; ``--max-objects`` small (default 10) lets this machine reach the
cap, and the cap scales with ``max_objects`` (500 by default in config.yaml).

    .venv/bin/python bench/bench_lease.py [--max-objects 10] [--rates 2,5,10,20,40] [--seconds 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from handlers import log  # noqa: E402
from handlers.batch import layout  # noqa: E402
from handlers.batch.driver import Driver  # noqa: E402
from handlers.batch.intake import Intake  # noqa: E402
from handlers.clients.storage import GcsStateStore, storage_client  # noqa: E402
from handlers.config import parse  # noqa: E402
from handlers.events import StorageObject  # noqa: E402
from handlers.retry import Deadline, RetryLater  # noqa: E402
from localstack.services import start_fake_gcs, start_gcs_proxy  # noqa: E402
from tests.fakes import FakeApi, FakePublisher  # noqa: E402

STATE, INBOX = "lease-bench-state", "lease-bench-inbox"
CONFIG = """
stores: {main: projects/p/locations/l/datasets/d/dicomStores/s}
rules: [{name: RULE, match: "gs://INBOX/**.dcm", store: main}]
batching: {max_objects: MAX, max_wait_seconds: 10, seal_after_quiet_seconds: 2}
state: {bucket: STATE}
results: {topic: projects/p/topics/results}
followup: {topic: projects/p/topics/followups}
"""


def one_rate(proxy: str, max_objects: int, rate: float, seconds: float, workers: int) -> dict[str, float]:
    """Objects arriving at ``rate`` per second for ``seconds`` on a fresh rule; what the lease limit did."""
    rule_name = f"r{int(rate * 10)}-{int(time.time() * 1000) % 100000}"
    text = CONFIG.replace("RULE", rule_name).replace("MAX", str(max_objects)).replace("INBOX", INBOX)
    config = parse(text.replace("STATE", STATE), "bench", {})
    rule = config.rules[0]
    store = GcsStateStore(STATE)
    drivers: list[threading.Thread] = []
    batches: list[str] = []

    def kick(rule_name: str, batch: str) -> None:  # the follow-up message: a driver of its own
        batches.append(batch)
        driver = Driver(store, config, FakeApi(), FakePublisher())

        def drive() -> None:
            try:
                driver.drive(rule_name, batch, Deadline(120))
            except RetryLater:
                pass  # sealed and imported; the (fake) operation runs on

        thread = threading.Thread(target=drive, daemon=True)
        thread.start()
        drivers.append(thread)

    intake = Intake(store, config, kick=kick)
    requests.post(f"{proxy}/proxy/reset", timeout=10).raise_for_status()
    latencies: list[float] = []
    count = int(rate * seconds)
    started = time.monotonic()

    def admit(index: int) -> None:
        due = started + index / rate
        time.sleep(max(0.0, due - time.monotonic()))
        obj = StorageObject(INBOX, f"s/{rule_name}/{index:06d}.dcm", "1", None, str(index))
        begun = time.monotonic()
        intake.admit(obj, rule, Deadline(120))
        latencies.append(time.monotonic() - begun)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(admit, range(count)))
    admitted_in = time.monotonic() - started
    for thread in drivers:
        thread.join(timeout=60)
    stats = requests.get(f"{proxy}/proxy/stats", timeout=10).json()
    limited = stats["rateLimited"]
    sizes = []
    for batch in batches:
        record = store.read(layout.record_path(rule_name, batch))
        if record is not None:
            sizes.append(len(record.data.get("members") or []) + len(record.data.get("skipped") or []))
    latencies.sort()
    return {"rate": rate, "achieved": count / admitted_in, "batches": len(batches),
            "mean batch": statistics.mean(sizes) if sizes else 0.0, "max batch": max(sizes, default=0),
            "lease 429": limited.get(f"{STATE}/leases/", 0), "all 429": sum(limited.values()),
            "p50 ms": 1000 * latencies[len(latencies) // 2], "p99 ms": 1000 * latencies[int(len(latencies) * 0.99)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-objects", type=int, default=10, help="batching.max_objects of the measured rule")
    parser.add_argument("--rates", default="2,5,10,20,40", help="objects per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each rate is offered")
    parser.add_argument("--workers", type=int, default=64, help="concurrent intakes")
    args = parser.parse_args()
    log.redirect(open("/dev/null", "w"))  # noqa: SIM115 - the protocol's log lines are not the output
    with tempfile.TemporaryDirectory(prefix="bench-lease-") as workdir:
        gcs = start_fake_gcs(Path(workdir))
        proxy = start_gcs_proxy(Path(workdir), upstream=gcs.url)
        try:
            for bucket in (STATE, INBOX):
                requests.post(f"{gcs.url}/storage/v1/b", json={"name": bucket}, timeout=10)
            import os

            os.environ["STORAGE_EMULATOR_HOST"] = proxy.url
            storage_client()  # the client reads the variable at creation
            rows = [one_rate(proxy.url, args.max_objects, float(rate), args.seconds, args.workers)
                    for rate in args.rates.split(",")]
        finally:
            proxy.stop()
            gcs.stop()
    print(f"max_objects {args.max_objects}; arithmetic cap: max_objects / lease writes per batch per second")
    columns = ("rate", "achieved", "batches", "mean batch", "max batch", "lease 429", "all 429", "p50 ms", "p99 ms")
    print(" | ".join(f"{c:>10}" for c in columns))
    print("-" * (13 * len(columns)))
    for row in rows:
        print(" | ".join(f"{row[c]:>10.1f}" if isinstance(row[c], float) else f"{row[c]:>10}" for c in columns))


if __name__ == "__main__":
    main()
