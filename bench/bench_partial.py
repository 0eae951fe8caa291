"""What a PARTIAL batch costs in extra calls: naming its failed files, verifying, applying a policy.

Runs the real intake and driver (handlers.batch, handlers.failures) on the
in-memory collaborators of tests/fakes.py, which count every Cloud Storage call
by kind, every Cloud Logging ``entries.list`` page and every QIDO / WADO call,
for one batch of ``--objects`` files of which ``--failures`` are empty. Each
scenario is compared with the same batch when it succeeds (which makes no
Logging call at all). Counts, not timings: the machine's load does not change
them.

    .venv/bin/python bench/bench_partial.py [--objects 500] [--failures 5] [--series 10]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handlers import log  # noqa: E402
from handlers.batch import layout  # noqa: E402
from handlers.batch.driver import Driver  # noqa: E402
from handlers.batch.intake import Intake  # noqa: E402
from handlers.config import parse  # noqa: E402
from handlers.events import StorageObject  # noqa: E402
from handlers.failures.header import inspect  # noqa: E402
from handlers.retry import Deadline, RetryLater  # noqa: E402
from localstack.samples import make_instance, new_uid  # noqa: E402
from tests.fakes import FakeApi, FakeClock, FakeLogging, FakePublisher, MemoryStateStore  # noqa: E402

CLASS_OF = {"write": "A", "copy": "A", "list": "A", "tag": "A", "copy_source": "A", "read": "B", "read_range": "B",
            "delete": "free", "delete_source": "free"}
CONFIG = """
stores: {main: projects/p/locations/l/datasets/d/dicomStores/s}
rules: [{name: all, match: "gs://inbox-bkt/**.dcm", store: main, on_failure: POLICY}]
batching: {max_objects: MAX, max_wait_seconds: 10, seal_after_quiet_seconds: 0}
state: {bucket: state-bkt}
results: {topic: projects/p/topics/results}
followup: {topic: projects/p/topics/followups}
"""


class CountingApi(FakeApi):
    def __init__(self) -> None:
        super().__init__()
        self.wado = 0

    def retrieve_instance(self, store, path, deadline):
        self.wado += 1
        return super().retrieve_instance(store, path, deadline)


@dataclass
class Scenario:
    name: str
    failures: int
    logged: int  # of the failures, how many Cloud Logging lists
    policy: str = "report"
    conflicts: bool = False  # the failures are re-sent instances (found by WADO) rather than empty files


def run(scenario: Scenario, objects: int, series: int) -> Counter:
    """Calls made by one batch, from the first event to the published result."""
    config = parse(CONFIG.replace("MAX", str(objects)).replace("POLICY", scenario.policy), "bench", {})
    clock, store, api, publisher, logging = FakeClock(), MemoryStateStore(), CountingApi(), FakePublisher(), FakeLogging()
    kicks: list[tuple[str, str]] = []
    intake = Intake(store, config, kick=lambda r, b: kicks.append((r, b)), clock=clock, sleep=clock.sleep)
    studies = [(new_uid(), new_uid()) for _ in range(series)]
    names = {}
    for index in range(objects):
        name = f"study/{index:05d}.dcm"
        if index < scenario.failures and not scenario.conflicts:
            data = b""
        elif index < scenario.failures:
            study, serie = studies[index % series]
            sop = new_uid()
            data = make_instance(study, serie, sop, rows=2, cols=2, patient_name="Re^Sent")
            api.instances[inspect(data).path] = make_instance(study, serie, sop, rows=2, cols=2)  # the stored one
        else:
            study, serie = studies[index % series]
            data = make_instance(study, serie, new_uid(), rows=2, cols=2)
            api.instances[inspect(data).path] = data  # what the import stores
        store.add_source("inbox-bkt", name, "1", data)
        obj = StorageObject("inbox-bkt", name, "1", len(data), str(index))
        names[name] = obj
        intake.admit(obj, config.rules[0], Deadline(60))
    driver = Driver(store, config, api, publisher, logging, lambda r, b: kicks.append((r, b)), clock=clock,
                    sleep=clock.sleep, monotonic=clock, failure_logs_wait_seconds=60)
    batch = kicks[0][1]
    try:
        driver.drive("all", batch, Deadline(600))
    except RetryLater:
        pass
    store.ops.clear()  # from here: what follows the import call
    operation = list(api.operations)[-1]
    for index, name in enumerate(list(names)[:scenario.logged]):
        source = f"gs://state-bkt/{layout.staging_path('all', batch, layout.object_id(names[name]))}"
        logging.add(operation, source, "empty DICOM instance found")
    api.finish(operation, success=objects - scenario.failures, failure=scenario.failures,
               error={"code": 3, "message": "failed"} if scenario.failures else None)
    driver.drive("all", batch, Deadline(600))
    counts = Counter(CLASS_OF.get(kind, kind) for kind, _ in store.ops)
    counts["Logging entries.list"] = logging.calls
    counts["QIDO"] = len(api.searches)
    counts["WADO"] = api.wado
    counts["named"] = publisher.messages[-1][1]["failuresListed"]
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--failures", type=int, default=5)
    parser.add_argument("--series", type=int, default=10, help="series the valid files belong to (QIDO: one per series)")
    args = parser.parse_args()
    log.redirect(open(os.devnull, "w"))
    f = args.failures
    scenarios = [
        Scenario("succeeded (baseline)", 0, 0),
        Scenario(f"{f} failed, all in Logging", f, f),
        Scenario(f"{f} failed, Logging lists 1 (sampled)", f, min(1, f)),
        Scenario(f"{f} failed, Logging lists none", f, 0),
        Scenario(f"{f} conflicts, Logging lists none", f, 0, conflicts=True),
        Scenario(f"{f} failed, all in Logging, on_failure: tag", f, f, "tag"),
        Scenario("150 failed, all in Logging (manifest)", 150, 150),
    ]
    columns = ("named", "Logging entries.list", "A", "B", "free", "QIDO", "WADO")
    print(f"one batch of {args.objects} objects in {args.series} series; calls after the import operation ends "
          f"(Cloud Storage by class, Cloud Logging pages, DICOMweb)\n")
    header = f"{'scenario':<44} | " + " | ".join(f"{c:>8}" for c in ("named", "Logging", "GCS A", "GCS B", "deletes",
                                                                         "QIDO", "WADO"))
    print(header)
    print("-" * len(header))
    base = None
    for scenario in scenarios:
        counts = run(scenario, args.objects, args.series)
        base = base or counts
        cells = [f"{counts[c]:>8}" if c == "named" else f"{counts[c] - (base[c] if c in ('A', 'B', 'free') else 0):>+8}"
                 if scenario is not scenarios[0] else f"{counts[c]:>8}" for c in columns]
        print(f"{scenario.name:<44} | " + " | ".join(cells))
    print("\nThe first row is absolute (publishing the result, deleting staging copies and markers); the others are "
          "what each adds to it. Deletes are free; Cloud Logging bills ingestion, not entries.list (which has its own "
          "per-project read quota). Verification reads the first 64 KiB of each unlisted non-empty member (GCS B), "
          "one QIDO search per series, and WADO (a full download) per stored member until the conflicts are found.")


if __name__ == "__main__":
    main()
