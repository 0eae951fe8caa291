"""Cost model: billable operations per 10,000 objects, batched against one import per object.

Our counts come from running the real intake and driver code (handlers.batch.intake,
handlers.batch.driver) on an in-memory store that counts every Cloud Storage call
by kind; the window's listing polls (one per second while a batch is open)
and operation polls are added from the settings and from bench_e2e's
measurement. The baseline's counts follow from bench/naive_function.py
(one import, its polls and one result message per object). Prices are list
prices (USD, us-central1), passed as options so they can be updated.

    .venv/bin/python bench/bench_cost.py [--objects 10000] [--max-objects 500] [--polls-batched 3.3]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from math import ceil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handlers import log  # noqa: E402
from handlers.cli.arguments import non_negative_number, positive_int, positive_number  # noqa: E402
from handlers.config import ConfigError, parse  # noqa: E402
from handlers.batch.driver import Driver  # noqa: E402
from handlers.events import StorageObject  # noqa: E402
from handlers.batch.intake import Intake  # noqa: E402
from handlers.retry import Deadline, RetryLater  # noqa: E402
from tests.fakes import FakeApi, FakeClock, FakePublisher, MemoryStateStore  # noqa: E402

# Cloud Storage JSON API operation classes (https://cloud.google.com/storage/pricing#operations-by-class).
CLASS_OF = {"write": "A", "copy": "A", "list": "A", "read": "B", "delete": "free"}
CONFIG = """
stores: {main: projects/p/locations/l/datasets/d/dicomStores/s}
rules: [{name: all, match: "gs://inbox-bkt/**.dcm", store: main}]
batching: {max_objects: MAX, max_wait_seconds: WAIT}
state: {bucket: state-bkt}
results: {topic: projects/p/topics/results}
followup: {topic: projects/p/topics/followups}
"""


def one_batch(size: int, max_wait: float) -> tuple[Counter, int]:
    """Cloud Storage operations by class, and follow-up messages, for one batch of ``size`` objects."""
    config = parse(CONFIG.replace("MAX", str(size)).replace("WAIT", str(max_wait)), "cost", {})
    clock, store, api, publisher = FakeClock(), MemoryStateStore(), FakeApi(), FakePublisher()
    kicks: list[tuple[str, str]] = []
    intake = Intake(store, config, kick=lambda r, b: kicks.append((r, b)), clock=clock, sleep=clock.sleep)
    for index in range(size):
        store.add_source("inbox-bkt", f"study/{index}.dcm", "1")
        intake.admit(StorageObject("inbox-bkt", f"study/{index}.dcm", "1", 1, str(index)), config.rules[0], Deadline(60))
    driver = Driver(store, config, api, publisher, clock=clock, sleep=clock.sleep)
    try:
        driver.drive("all", kicks[0][1], Deadline(60))
    except RetryLater:
        pass
    for name in api.operations:
        api.finish(name, success=size)
    driver.drive("all", kicks[0][1], Deadline(60))
    return Counter(CLASS_OF[kind] for kind, _ in store.ops), len(kicks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=positive_int, default=10_000)
    parser.add_argument("--max-objects", type=positive_int, default=500, help="batching.max_objects")
    parser.add_argument("--window", type=positive_number, default=10.0,
                        help="seconds a batch stays open (listing polls): batching.max_wait_seconds")
    parser.add_argument("--polls-batched", type=non_negative_number, default=3.3,
                        help="operations.get per batched import (bench_e2e)")
    parser.add_argument("--polls-per-object", type=non_negative_number, default=2.25,
                        help="operations.get per per-object import (bench_e2e)")
    parser.add_argument("--gcs-class-a", type=non_negative_number, default=0.005 / 1000)
    parser.add_argument("--gcs-class-b", type=non_negative_number, default=0.0004 / 1000)
    parser.add_argument("--healthcare-request", type=non_negative_number, default=0.39 / 100_000)
    parser.add_argument("--pubsub-per-message", type=non_negative_number, default=40 / 2**40 * 2000,
                        help="$40/TiB, 1,000-byte minimum on publish and on delivery")
    parser.add_argument("--invocation", type=non_negative_number, default=0.40 / 1_000_000)
    args = parser.parse_args()
    log.redirect(open(os.devnull, "w"))

    batches = ceil(args.objects / args.max_objects)
    try:
        ops, followups = one_batch(args.max_objects, args.window)
    except ConfigError as exc:  # the config's own bounds on batching (max_objects, max_wait_seconds)
        parser.error(f"--max-objects {args.max_objects} or --window {args.window:g}: "
                     + "; ".join(problem.split(": ", 1)[-1] for problem in exc.problems))
    per_batch_lists = ceil(args.window)  # the driver lists the staging folder once a second while the batch is open
    ours = {
        "import calls": batches,
        "operations.get": round(batches * args.polls_batched),
        "GCS Class A": batches * (ops["A"] + per_batch_lists),
        "GCS Class B": batches * ops["B"],
        "Pub/Sub messages": batches * (followups + 1),
        "invocations": args.objects + batches * followups,
    }
    naive = {
        "import calls": args.objects,
        "operations.get": round(args.objects * args.polls_per_object),
        "GCS Class A": 0,
        "GCS Class B": 0,
        "Pub/Sub messages": args.objects,
        "invocations": args.objects,
    }
    price = {"import calls": args.healthcare_request, "operations.get": args.healthcare_request,
             "GCS Class A": args.gcs_class_a, "GCS Class B": args.gcs_class_b,
             "Pub/Sub messages": args.pubsub_per_message, "invocations": args.invocation}

    print(f"per {args.objects:,} objects; batches of {args.max_objects} (window {args.window:g} s); "
          f"operation polls per import: {args.polls_batched:g} batched, {args.polls_per_object:g} per object\n")
    print(f"{'item':<18} | {'unit price $':>12} | {'batched':>9} | {'batched $':>9} | {'per-object':>10} | {'per-object $':>12}")
    print("-" * 84)
    totals = [0.0, 0.0]
    for item in ours:
        cost_ours, cost_naive = ours[item] * price[item], naive[item] * price[item]
        totals[0] += cost_ours
        totals[1] += cost_naive
        print(f"{item:<18} | {price[item]:>12.8f} | {ours[item]:>9,} | {cost_ours:>9.4f} | {naive[item]:>10,} | {cost_naive:>12.4f}")
    print("-" * 84)
    print(f"{'total':<18} | {'':>12} | {'':>9} | {totals[0]:>9.4f} | {'':>10} | {totals[1]:>12.4f}")
    per_object = {k: v / args.max_objects for k, v in ops.items()}
    print(f"\nCloud Storage calls per object in our protocol (measured on the code): Class A {per_object['A']:.2f}, "
          f"Class B {per_object['B']:.2f}, free (deletes) {per_object['free']:.2f}.")
    print("Same for both and not shown: the Eventarc delivery per object, the API reading each file once, the "
          "Healthcare API's ETL and storage charges (same bytes). Not modelled: instance time (Cloud Run bills "
          "instances, shared by concurrent requests): the per-object function holds every request until its "
          "operation ends, ours holds one request per open batch.")


if __name__ == "__main__":
    main()
