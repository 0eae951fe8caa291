"""The real gcloud against the local stack, through the configuration ``make up`` writes (CLOUDSDK_CONFIG).

gcloud judges the emulators: it builds its requests from Google's discovery documents and reads the
answers with Google's own response handling, so a command that works here works because the stand-ins
answer as the real APIs do. gcloud takes a second or two to start: the commands are few.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from localstack import __main__ as localstack_cli
from localstack.samples import make_series
from localstack.stack import Stack

pytestmark = pytest.mark.stack

GCLOUD_TIMEOUT = 120
LOCATION = ["--location=us-central1", "--dataset=local-dataset"]


def gcloud_binary() -> str:
    found = shutil.which("gcloud")
    assert found, "gcloud is not installed: it comes with the Google Cloud SDK (the Pub/Sub emulator's package)"
    return found


def gcloud(stack: Stack, *argv: str, json_flag: str = "--format=json") -> object:
    """Run ``gcloud ARGV --format=json`` with only the stack's configuration; the parsed output.

    ``json_flag``: how the command is asked for JSON (``gcloud storage ls`` takes ``--json`` only).
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLOUDSDK_")}
    env["CLOUDSDK_CONFIG"] = stack.env["CLOUDSDK_CONFIG"]
    done = subprocess.run([gcloud_binary(), *argv, json_flag], env=env, capture_output=True, text=True,
                          timeout=GCLOUD_TIMEOUT)
    assert done.returncode == 0, f"gcloud {' '.join(argv)}: {done.stderr}"
    return json.loads(done.stdout) if done.stdout.strip() else None


def operation_done(stack: Stack, operation_name: str, timeout: float = 60) -> dict:
    """``gcloud healthcare operations describe`` until the operation is done (or ``timeout``); the last answer."""
    operation_id = operation_name.rsplit("/", 1)[1]
    deadline = time.monotonic() + timeout
    described = gcloud(stack, "healthcare", "operations", "describe", operation_id, *LOCATION)
    while not described.get("done") and time.monotonic() < deadline:
        described = gcloud(stack, "healthcare", "operations", "describe", operation_id, *LOCATION)
    return described


def proxy_requests(stack: Stack) -> dict[str, int]:
    """Requests the Cloud Storage proxy has forwarded, by method id (``GET /proxy/stats``)."""
    return requests.get(f"{stack.gcs_proxy.url}/proxy/stats", timeout=10).json()["requests"]


def test_the_configuration_points_every_override_at_the_stack_without_credentials(local_stack: Stack, capsys):
    directory = Path(local_stack.env["CLOUDSDK_CONFIG"])
    assert directory == local_stack.workdir / "gcloud"
    assert (directory / "active_config").read_text() == "default"
    properties = configparser.ConfigParser()
    properties.read(directory / "configurations" / "config_default")
    assert dict(properties["api_endpoint_overrides"]) == {
        "healthcare": f"{local_stack.healthcare.url}/",
        "pubsub": f"http://{local_stack.pubsub.host}/",
        "storage": f"{local_stack.gcs_proxy.url}/storage/v1/",  # through the Cloud Storage proxy, as every tool
        "logging": f"{local_stack.env['LOGGING_EMULATOR_HOST']}/",
    }
    assert properties["auth"]["disable_credentials"] == "true"
    assert properties["core"]["project"] == local_stack.env["GOOGLE_CLOUD_PROJECT"]
    assert localstack_cli.main(["--workdir", str(local_stack.workdir), "env"]) == 0
    assert f"export CLOUDSDK_CONFIG={directory}" in capsys.readouterr().out.splitlines()


def test_gcloud_lists_stores_and_topics_imports_describes_the_operation_and_counts(local_stack: Stack):
    env = local_stack.env
    stores = gcloud(local_stack, "healthcare", "dicom-stores", "list", *LOCATION)
    assert [store["name"] for store in stores if store["name"] == env["DICOM_STORE"]] == [env["DICOM_STORE"]]
    topics = {topic["name"] for topic in gcloud(local_stack, "pubsub", "topics", "list")}
    assert {env["RESULTS_TOPIC"], env["FOLLOWUP_TOPIC"], env["EXPORT_REQUESTS_TOPIC"],
            env["NOTIFICATIONS_TOPIC"]} <= topics

    # An import into a store of this test's own, from the export bucket (no function watches it).
    store_id = f"gcloud-{uuid.uuid4().hex[:8]}"
    dataset = env["DICOM_STORE"].rsplit("/dicomStores/", 1)[0]
    created = requests.post(f"{local_stack.healthcare.url}/v1/{dataset}/dicomStores", params={"dicomStoreId": store_id},
                            timeout=30)
    assert created.status_code == 200, created.text
    instances = make_series(3)
    for uids, data in instances:
        uploaded = requests.post(f"{local_stack.gcs.url}/upload/storage/v1/b/{env['EXPORT_BUCKET']}/o",
                                 params={"uploadType": "media", "name": f"{store_id}/{uids.sop}.dcm"}, data=data,
                                 timeout=30)
        assert uploaded.status_code == 200, uploaded.text
    operation = gcloud(local_stack, "healthcare", "dicom-stores", "import", "gcs", store_id, *LOCATION,
                       f"--gcs-uri=gs://{env['EXPORT_BUCKET']}/{store_id}/**.dcm", "--async")
    assert operation["name"].startswith(f"{dataset}/operations/")
    described = operation_done(local_stack, operation["name"])
    assert described["done"] and "error" not in described, described
    assert described["metadata"]["apiMethodName"] == "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"
    assert described["metadata"]["counter"] == {"success": "3"}
    found = requests.get(f"{local_stack.healthcare.url}/v1/{dataset}/dicomStores/{store_id}/dicomWeb/instances",
                         timeout=30).json()
    assert {item["00080018"]["Value"][0] for item in found} == {uids.sop for uids, _ in instances}
    metrics = gcloud(local_stack, "healthcare", "dicom-stores", "metrics", store_id, *LOCATION)
    assert {key: metrics[key] for key in ("studyCount", "seriesCount", "instanceCount")} == {
        "studyCount": "1", "seriesCount": "1", "instanceCount": "3"}


def test_gcloud_storage_copies_and_lists_and_logging_reads_the_errors_of_a_failed_import(local_stack: Stack,
                                                                                        tmp_path: Path):
    """docs/local-stack.md's session: ``storage buckets create``, ``storage cp``, ``storage ls`` (through the
    Cloud Storage proxy to fake-gcs-server), an import of the copied folder that fails on its non-DICOM file,
    and ``logging read`` of the operation's per-file errors (the Logging stand-in's ``entries.list``)."""
    env = local_stack.env
    name = f"gcloud-{uuid.uuid4().hex[:8]}"
    (uids, data), = make_series(1)
    files = {f"{uids.sop}.dcm": data, "notes.dcm": b"a radiology note, not a DICOM file"}
    for file_name, content in files.items():
        (tmp_path / file_name).write_bytes(content)
    folder = f"gs://{name}/archive/2019/MR-0007/"
    before = proxy_requests(local_stack)
    gcloud(local_stack, "storage", "buckets", "create", f"gs://{name}")
    gcloud(local_stack, "storage", "cp", *(str(tmp_path / file_name) for file_name in sorted(files)), folder)
    listed = gcloud(local_stack, "storage", "ls", f"gs://{name}/**", json_flag="--json")
    assert {item["metadata"]["name"]: int(item["metadata"]["size"]) for item in listed} == {
        f"archive/2019/MR-0007/{file_name}": len(content) for file_name, content in files.items()}
    served = requests.get(f"{local_stack.gcs.url}/storage/v1/b/{name}/o/archive%2F2019%2FMR-0007%2F{uids.sop}.dcm",
                          params={"alt": "media"}, timeout=30)
    assert served.content == data  # fake-gcs-server holds what gcloud copied, byte for byte
    after = proxy_requests(local_stack)
    through = {method: after.get(method, 0) - before.get(method, 0)
               for method in ("buckets.insert", "objects.insert", "objects.list")}
    assert through["buckets.insert"] >= 1 and through["objects.insert"] >= 2 and through["objects.list"] >= 1, through

    dataset = env["DICOM_STORE"].rsplit("/dicomStores/", 1)[0]
    gcloud(local_stack, "healthcare", "dicom-stores", "create", name, *LOCATION)
    operation = gcloud(local_stack, "healthcare", "dicom-stores", "import", "gcs", name, *LOCATION,
                       f"--gcs-uri=gs://{name}/archive/**.dcm", "--async")
    described = operation_done(local_stack, operation["name"])
    assert described["done"] and "error" in described, described
    assert described["metadata"]["counter"] == {"success": "1", "failure": "1"}
    entries = gcloud(local_stack, "logging", "read", f'operation.id="{operation["name"]}"')
    assert [entry["jsonPayload"]["source"] for entry in entries] == [f"{folder}notes.dcm"]
    entry, = entries
    assert entry["severity"] == "ERROR" and entry["resource"]["type"] == "healthcare_dicom_store"
    assert entry["resource"]["labels"]["dicom_store_id"] == name
    assert entry["jsonPayload"]["error"]["message"].startswith("not a DICOM file")
    assert entry["logName"].startswith(f"{dataset.split('/locations/')[0]}/logs/")
