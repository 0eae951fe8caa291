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


def gcloud(stack: Stack, *argv: str) -> object:
    """Run ``gcloud ARGV --format=json`` with only the stack's configuration; the parsed output."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLOUDSDK_")}
    env["CLOUDSDK_CONFIG"] = stack.env["CLOUDSDK_CONFIG"]
    done = subprocess.run([gcloud_binary(), *argv, "--format=json"], env=env, capture_output=True, text=True,
                          timeout=GCLOUD_TIMEOUT)
    assert done.returncode == 0, f"gcloud {' '.join(argv)}: {done.stderr}"
    return json.loads(done.stdout)


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
    operation_id = operation["name"].rsplit("/", 1)[1]
    deadline = time.monotonic() + 60
    described = gcloud(local_stack, "healthcare", "operations", "describe", operation_id, *LOCATION)
    while not described.get("done") and time.monotonic() < deadline:
        described = gcloud(local_stack, "healthcare", "operations", "describe", operation_id, *LOCATION)
    assert described["done"] and "error" not in described, described
    assert described["metadata"]["apiMethodName"] == "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"
    assert described["metadata"]["counter"] == {"success": "3"}
    found = requests.get(f"{local_stack.healthcare.url}/v1/{dataset}/dicomStores/{store_id}/dicomWeb/instances",
                         timeout=30).json()
    assert {item["00080018"]["Value"][0] for item in found} == {uids.sop for uids, _ in instances}
    metrics = gcloud(local_stack, "healthcare", "dicom-stores", "metrics", store_id, *LOCATION)
    assert {key: metrics[key] for key in ("studyCount", "seriesCount", "instanceCount")} == {
        "studyCount": "1", "seriesCount": "1", "instanceCount": "3"}
