"""Calls per reconcile sweep: a bucket of N objects of which M were created since the last sweep.

Two measurements:

* ``model`` (default, a second): the real sweep code (handlers.reconcile) on an
  in-memory state bucket that counts every call by class, and a listing served
  1,000 objects a call, as Cloud Storage pages it; with every new object
  already covered by its claim, and with some lost (admitted).
* ``--stack``: the same on the local stack, counted by the Cloud Storage proxy
  (``/proxy/stats``): N objects uploaded with their events, a checkpoint, M more,
  then one sweep (``reconcile.overlap_minutes: 0``, ``settle_seconds: 0``).

    .venv/bin/python bench/bench_reconcile.py [--objects 100000] [--new 1000] [--lost 20]
    .venv/bin/python bench/bench_reconcile.py --stack [--objects 5000] [--new 500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from math import ceil
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handlers import log  # noqa: E402
from handlers.batch.intake import Intake  # noqa: E402
from handlers.batch.reporting import Reporter  # noqa: E402
from handlers.cli.arguments import positive_int  # noqa: E402
from handlers.clients.storage import SourceObject  # noqa: E402
from handlers.config import parse  # noqa: E402
from handlers.events import StorageObject  # noqa: E402
from handlers.reconcile.sweep import Sweeper  # noqa: E402
from handlers.retry import Deadline  # noqa: E402
from tests.fakes import FakeClock, FakePublisher, MemorySource, MemoryStateStore  # noqa: E402

CLASS_OF = {"write": "A", "copy": "A", "list": "A", "read": "B", "delete": "free"}
PAGE = 1000
CONFIG = """
stores: {main: projects/p/locations/l/datasets/d/dicomStores/s}
rules: [{name: all, match: "gs://inbox-bkt/**.dcm", store: main}]
state: {bucket: state-bkt}
results: {topic: projects/p/topics/results}
followup: {topic: projects/p/topics/followups}
reconcile: {overlap_minutes: 10, settle_seconds: 120}
"""


class PagedSource(MemorySource):
    """A listing served PAGE objects per call, counted, as the JSON API's objects.list pages it."""

    def __init__(self, store: MemoryStateStore) -> None:
        super().__init__(store)
        self.list_calls = 0

    def list(self, bucket: str, prefix: str, start_offset: str | None = None) -> Iterator[SourceObject]:
        for index, item in enumerate(super().list(bucket, prefix, start_offset)):
            if index % PAGE == 0:
                self.list_calls += 1
            yield item


def model(objects: int, new: int, lost: int) -> dict[str, int]:
    """One sweep's calls: ``objects`` in the bucket, ``new`` created in the window, ``lost`` of them with no claim."""
    config = parse(CONFIG, "bench", {})
    rule = config.rules[0]
    clock = FakeClock()
    store = MemoryStateStore(clock=clock)
    source = PagedSource(store)
    intake = Intake(store, config, kick=lambda r, b: None, clock=clock, sleep=clock.sleep)
    for index in range(objects - new):
        source.add("inbox-bkt", f"old/{index:07d}.dcm", "1", clock.now - 40 * 86400)
    for index in range(new):
        source.add("inbox-bkt", f"new/{index:07d}.dcm", "1", clock.now - 3600)
        if index >= lost:  # its event came: a claim exists
            intake.admit(StorageObject("inbox-bkt", f"new/{index:07d}.dcm", "1", None, "e"), rule, Deadline(60))
    store.ops.clear()
    publisher = FakePublisher()
    sweeper = Sweeper(store, source, config, intake, Reporter(store, publisher, config.results_topic, clock),
                      clock=clock)
    result = sweeper.run(Deadline(3600))
    by_class = Counter(CLASS_OF[kind] for kind, _ in store.ops)
    claim_reads = sum(1 for kind, path in store.ops if kind == "read" and path.startswith("claims/"))
    return {"objects": objects, "new": new, "lost": lost, "list calls": source.list_calls,
            "claim reads": claim_reads, "state class A": by_class["A"], "state class B": by_class["B"],
            "admitted": result["totals"]["admitted"], "messages": len(publisher.messages)}


def stack(objects: int, new: int) -> dict[str, int]:
    """The same sweep on the local stack, counted by the Cloud Storage proxy."""
    import requests

    from localstack import samples
    from localstack.stack import Stack
    from localstack.observe import ResultsReader
    from tests.e2e.helpers import upload

    config_path = Path(tempfile.mkdtemp()) / "config.yaml"
    config_path.write_text((ROOT / "config.yaml").read_text() + "\nreconcile:\n  overlap_minutes: 0\n"
                           "  settle_seconds: 0\n")
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as workdir:
        stack = Stack(Path(workdir), config=config_path, gcs_backend="filesystem")
        env = stack.start()
        try:
            data = samples.make_series(1)[0][1]
            reader = ResultsReader(env)
            print(f"  uploading {objects - new} objects (their events are delivered)...", flush=True)
            upload(env, [(f"old/{i:07d}.dcm", data) for i in range(objects - new)], threads=32)
            _drain(reader, objects - new)
            sweeper = _sweeper(env, config_path)
            sweeper.run(Deadline(3600))  # the checkpoint: everything so far
            print(f"  uploading {new} more...", flush=True)
            time.sleep(1.0)
            upload(env, [(f"new/{i:07d}.dcm", data) for i in range(new)], threads=32)
            _drain(reader, new)
            time.sleep(3.0)  # the drivers delete their batches' staging copies after publishing: not ours to count
            proxy = env["STORAGE_EMULATOR_HOST"] + "/proxy"
            requests.post(f"{proxy}/reset", timeout=10).raise_for_status()
            started = time.monotonic()
            result = sweeper.run(Deadline(3600))
            seconds = time.monotonic() - started
            counted = requests.get(f"{proxy}/stats", timeout=10).json()["requests"]
        finally:
            stack.stop()
    return {"objects": objects, "new": new, "lost": 0, "list calls": counted.get("objects.list", 0),
            "claim reads": result["totals"]["covered"], "state class A": counted.get("objects.insert", 0),
            "state class B": counted.get("objects.get", 0), "admitted": result["totals"]["admitted"],
            "messages": 1, "seconds": round(seconds, 1)}


def _sweeper(env: dict[str, str], config_path: Path) -> Sweeper:
    import os

    from handlers.config import load
    from handlers.runtime import Runtime

    os.environ.update(env)
    return Runtime(load(config_path)).reconciler


def _drain(reader, count: int) -> None:
    """Wait until result messages cover ``count`` more objects."""
    from localstack.observe import covered_objects

    target = covered_objects(reader.received) + count
    reader.until(lambda got: covered_objects(got) >= target, timeout=3600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=positive_int, default=None, help="objects in the bucket (default 100,000; 5,000 with --stack)")
    parser.add_argument("--new", type=positive_int, default=None, help="created since the last sweep (default 1,000; 500 with --stack)")
    parser.add_argument("--lost", type=int, default=20, help="of the new, how many lost their event (model)")
    parser.add_argument("--stack", action="store_true", help="measure on the local stack, through the proxy")
    args = parser.parse_args()
    log.redirect(open("/dev/null", "w"))  # noqa: SIM115 - the sweep's log lines are not the output
    if args.stack:
        rows = [stack(5000 if args.objects is None else args.objects, 500 if args.new is None else args.new)]
    else:
        objects, new = 100_000 if args.objects is None else args.objects, 1000 if args.new is None else args.new
        rows = [model(objects, new, 0), model(objects, new, args.lost)]
    print(f"{'objects':>8} | {'new':>5} | {'lost':>4} | {'list calls':>10} | {'claim reads':>11} | "
          f"{'state A':>7} | {'state B':>7} | {'admitted':>8} | expected list calls")
    print("-" * 100)
    for row in rows:
        print(f"{row['objects']:>8} | {row['new']:>5} | {row['lost']:>4} | {row['list calls']:>10} | "
              f"{row['claim reads']:>11} | {row['state class A']:>7} | {row['state class B']:>7} | "
              f"{row['admitted']:>8} | ceil({row['objects']}/{PAGE}) = {ceil(row['objects'] / PAGE)}"
              + (f" | {row['seconds']} s" if "seconds" in row else ""))


if __name__ == "__main__":
    main()
