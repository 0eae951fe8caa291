"""Every event of a drop lost for good, then ``python -m handlers reconcile``: every object imported and
reported once, one reconcile result; a second sweep finds nothing left to do."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from localstack import samples
from localstack.observe import ResultsReader, api_calls, store_sop_uids
from tests.e2e.conftest import CONFIG
from tests.e2e.helpers import covered_names, unique_prefix, upload, wait_for_names
from tests.message_schemas import validate

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def reconcile(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "handlers", "reconcile", "--env-file", str(env_file),
                           "--config", str(CONFIG), *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def bridge_route(env) -> dict:
    return requests.get(f"{env['BRIDGE_URL']}/status", timeout=5).json()["routes"]["function"]


def test_a_drop_whose_events_were_all_lost_is_imported_and_reported_once_after_reconcile(e2e_stack, tmp_path):
    env = e2e_stack.env
    env_file = tmp_path / "stack.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    reader = ResultsReader(env)
    reader.drain(quiet=0.5)
    prefix = unique_prefix("lost")
    series = samples.make_series(30)
    files = [(f"{prefix}study/{i:03d}.dcm", data) for i, (_, data) in enumerate(series)]
    files.append((f"{prefix}study/broken.dcm", b"not DICOM"))
    imports_before = api_calls(env).get("dicomStores.import", 0)

    dropped_before = bridge_route(env)["dropped"]
    requests.put(f"{env['BRIDGE_URL']}/events", json={"drop": 1}, timeout=5).raise_for_status()
    try:
        upload(env, files)
        deadline = time.monotonic() + 60
        while bridge_route(env)["dropped"] - dropped_before < len(files):
            assert time.monotonic() < deadline, bridge_route(env)
            time.sleep(0.2)
    finally:
        requests.put(f"{env['BRIDGE_URL']}/events", json={"drop": 0}, timeout=5).raise_for_status()
    time.sleep(2)
    assert api_calls(env).get("dicomStores.import", 0) == imports_before, "nothing was imported: events lost"

    swept = reconcile(env_file)
    assert swept.returncode == 0, swept.stderr
    assert f"RECOVERED: {len(files)} objects no event had announced" in swept.stdout

    names = [name for name, _ in files]
    results = wait_for_names(reader, env["INBOX_BUCKET"], prefix, names, timeout=90, quiet=4)
    imports = [r for r in results if r.data["schema"] == "dicom-import-result/v1"]
    covered = covered_names(imports, env["INBOX_BUCKET"], prefix)
    assert set(covered) == set(names) and set(covered.values()) == {1}, "each object reported by one batch"
    assert len({r.data["batch"] for r in imports}) == len(imports), "each batch reported once"
    assert sum(r.data["counter"]["failure"] for r in imports) == 1
    assert {uids.sop for uids, _ in series} <= store_sop_uids(env)
    [sweep] = [r for r in reader.received if r.data["schema"] == "dicom-reconcile-result/v1"]
    validate(sweep.data, sweep.attributes)
    assert sweep.data["outcome"] == "RECOVERED" and sweep.attributes["admittedCount"] == str(len(files))
    admitted = {item["uri"] for item in sweep.data["admitted"]}
    assert admitted == {f"gs://{env['INBOX_BUCKET']}/{name}" for name in names}
    assert {item["batch"] for item in sweep.data["admitted"]} == {r.data["batch"] for r in imports}

    imports_after = api_calls(env).get("dicomStores.import", 0)
    again = reconcile(env_file, "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["outcome"] == "SUCCEEDED" and second["totals"]["admitted"] == 0
    assert second["totals"]["covered"] >= len(files)
    time.sleep(4)
    assert api_calls(env).get("dicomStores.import", 0) == imports_after, "the second sweep imported nothing"
