"""Cold start: time to import ``main.py``, time to handle the first event, peak memory.

``main.py`` is timed after ``functions_framework`` is imported, as the runtime
loads the framework before the function's source; the framework's own import
is shown beside it.

Each figure is the median of fresh Python processes. "lazy" is ``main.py`` as
deployed (Google clients imported on first use); "eager" imports
google-cloud-storage, google-cloud-pubsub and google-auth's transport before
``main.py``, as a module that creates its clients at import time would.

First events:
* unmatched: an object no rule matches (config load and routing only);
* admitted: a real object admitted into a batch on a local fake-gcs-server and
  Pub/Sub emulator (state bucket reads and writes, staging copy, driver message).

    .venv/bin/python bench/bench_coldstart.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EAGER_IMPORTS = "import google.cloud.storage, google.cloud.pubsub_v1, google.auth.transport.requests\n"

CHILD = r"""
import json, resource, sys, time
start = time.perf_counter()
import functions_framework
framework = time.perf_counter()
{eager}import main
imported = time.perf_counter()
from functions_framework import create_app
client = create_app("on_object_finalized", "main.py").test_client()
headers = {{"ce-specversion": "1.0", "ce-type": "google.cloud.storage.object.v1.finalized", "ce-id": "bench-1",
           "ce-source": "//storage.googleapis.com/projects/_/buckets/{bucket}", "ce-subject": "objects/{name}",
           "Content-Type": "application/json"}}
body = json.dumps({{"bucket": "{bucket}", "name": "{name}", "generation": "{generation}", "size": "4"}})
ready = time.perf_counter()
response = client.post("/", headers=headers, data=body)
done = time.perf_counter()
print(json.dumps({{"framework_ms": (framework - start) * 1000, "import_ms": (imported - framework) * 1000,
                   "event_ms": (done - ready) * 1000,
                   "status": response.status_code,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run_child(eager: bool, env: dict[str, str], bucket: str, name: str, generation: str) -> dict:
    code = CHILD.format(eager=EAGER_IMPORTS if eager else "", bucket=bucket, name=name, generation=generation)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def medians(samples: list[dict]) -> dict:
    assert all(s["status"] == 200 for s in samples), samples
    keys = ("framework_ms", "import_ms", "event_ms", "peak_rss_mb")
    return {key: statistics.median(s[key] for s in samples) for key in keys}


def stack_env(workdir: Path) -> tuple[dict[str, str], list]:
    """fake-gcs-server and the Pub/Sub emulator with the buckets and topic the config names."""
    from localstack.pubsub import PubSubRest
    from localstack.services import start_fake_gcs, start_pubsub_emulator

    gcs = start_fake_gcs(workdir / "gcs")
    pubsub = start_pubsub_emulator(workdir / "pubsub")
    env = {
        **os.environ, **gcs.env, **pubsub.env,
        "GOOGLE_CLOUD_PROJECT": "bench-project", "INBOX_BUCKET": "bench-inbox", "STATE_BUCKET": "bench-state",
        "DICOM_STORE": "projects/bench-project/locations/l/datasets/d/dicomStores/s",
        "RESULTS_TOPIC": "projects/bench-project/topics/results",
        "FOLLOWUP_TOPIC": "projects/bench-project/topics/followups",
    }
    import requests

    for bucket in ("bench-inbox", "bench-state"):
        requests.post(f"{gcs.url}/storage/v1/b?project=bench-project", json={"name": bucket}, timeout=10)
    PubSubRest(pubsub.env["PUBSUB_EMULATOR_HOST"]).create_topic(env["FOLLOWUP_TOPIC"])
    return env, [gcs, pubsub]


def upload(env: dict[str, str], name: str) -> str:
    import requests

    response = requests.post(f"{env['STORAGE_EMULATOR_HOST']}/upload/storage/v1/b/bench-inbox/o",
                             params={"uploadType": "media", "name": name}, data=b"DICM", timeout=10)
    response.raise_for_status()
    return response.json()["generation"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        env, services = stack_env(Path(tmp))
        try:
            rows = []
            for eager in (False, True):
                unmatched = medians([run_child(eager, env, "bench-inbox", "notes.txt", "1") for _ in range(args.runs)])
                admitted = []
                for run in range(args.runs):
                    name = f"{'eager' if eager else 'lazy'}/{run}.dcm"
                    admitted.append(run_child(eager, env, "bench-inbox", name, upload(env, name)))
                rows.append(("eager" if eager else "lazy", unmatched, medians(admitted)))
        finally:
            for service in services:
                service.stop()

    print(f"{'main.py':<8} | {'framework ms':>12} | {'main.py ms':>10} | {'total ms':>8} | {'1st event unmatched ms':>22} | "
          f"{'1st event admitted ms':>21} | {'peak RSS MB':>11}")
    print("-" * 114)
    for label, unmatched, admitted in rows:
        total = unmatched["framework_ms"] + unmatched["import_ms"]
        print(f"{label:<8} | {unmatched['framework_ms']:>12.0f} | {unmatched['import_ms']:>10.0f} | {total:>8.0f} | "
              f"{unmatched['event_ms']:>22.0f} | {admitted['event_ms']:>21.0f} | {admitted['peak_rss_mb']:>11.1f}")
    print("\nframework: importing functions_framework (the runtime has done it before it loads main.py); "
          "main.py: importing main.py after it")
    print(f"\nmedian of {args.runs} fresh processes each; Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
