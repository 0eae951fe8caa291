"""Export requests on Pub/Sub end to end: published to the export-requests topic, delivered by the bridge
to on_export_request under functions-framework, answered with a dicom-export-result/v1 on the results topic.
"""

from __future__ import annotations

import json
import uuid

import pytest

from localstack.observe import ResultsReader, api_calls
from localstack.pubsub import PubSubRest
from localstack.samples import make_series
from tests.e2e.helpers import storage, unique_prefix, upload, wait_for_names
from tests.message_schemas import validate

pytestmark = pytest.mark.e2e

RESULT_TIMEOUT = 60.0


def request_export(env, body: dict) -> str:
    """Publish an export request; returns its requestId."""
    body = {"requestId": f"e2e-{uuid.uuid4().hex[:12]}", **body}
    PubSubRest(env["PUBSUB_EMULATOR_HOST"]).publish(env["EXPORT_REQUESTS_TOPIC"], json.dumps(body).encode())
    return body["requestId"]


def result_of(reader: ResultsReader, request_id: str) -> dict:
    def mine(results):
        return [r for r in results if r.data.get("requestId") == request_id]

    found = mine(reader.until(lambda got: bool(mine(got)), RESULT_TIMEOUT))
    assert found, f"no result for export request {request_id} within {RESULT_TIMEOUT:g} s"
    validate(found[0].data, found[0].attributes)
    return found[0].data


@pytest.mark.parametrize("destination", ["gs://attacker-bucket/loot", "gs://{EXPORT_BUCKET}-copy/x"])
def test_a_destination_outside_exports_destinations_is_rejected_naming_the_rule(env, reader, destination):
    before = api_calls(env)
    request_id = request_export(env, {"store": "main", "destination": destination.format(**env)})
    result = result_of(reader, request_id)
    assert result["outcome"] == "REJECTED" and result["operation"] is None
    assert result["error"]["rule"] == "exports.destinations" and result["error"]["status"] == "PERMISSION_DENIED"
    assert f"is outside exports.destinations (gs://{env['EXPORT_BUCKET']}/)" in result["error"]["message"]
    after = api_calls(env)
    assert after.get("dicomStores.export", 0) == before.get("dicomStores.export", 0)


def test_a_store_not_in_the_config_is_rejected_naming_the_rule(env, reader):
    elsewhere = env["DICOM_STORE"].rsplit("/", 1)[0] + "/not-configured"
    request_id = request_export(env, {"store": elsewhere, "destination": f"gs://{env['EXPORT_BUCKET']}/x"})
    result = result_of(reader, request_id)
    assert result["outcome"] == "REJECTED" and result["error"]["rule"] == "stores"
    assert f"store '{elsewhere}' is not one of the stores in tests/e2e/config.yaml" in result["error"]["message"]


def test_a_query_on_pubsub_exports_exactly_the_matching_studies(env, reader):
    """Studies of one patient (unique to this run) imported through the function, then exported by query."""
    patient = f"E2E-{uuid.uuid4().hex[:8]}"
    studies = {
        "ct-match": make_series(2, modality="CT", study_date="20260301", patient_id=patient),
        "ct-match-2": make_series(1, modality="CT", study_date="20261130", patient_id=patient),
        "mr-in-range": make_series(1, modality="MR", study_date="20260301", patient_id=patient),
        "ct-out-of-range": make_series(1, modality="CT", study_date="20250301", patient_id=patient),
    }
    prefix = unique_prefix("query")
    files = [(f"{prefix}{uids.sop}.dcm", data) for items in studies.values() for uids, data in items]
    upload(env, files)
    wait_for_names(reader, env["INBOX_BUCKET"], prefix, [name for name, _ in files], timeout=120)

    folder = prefix.rstrip("/")
    where = f"PatientID={patient}&ModalitiesInStudy=CT&StudyDate=20260101-20261231"
    request_id = request_export(env, {"store": "main", "destination": f"gs://{env['EXPORT_BUCKET']}/{folder}",
                                      "query": where})
    result = result_of(reader, request_id)
    assert result["outcome"] == "SUCCEEDED", result
    shown = "PatientID=…&ModalitiesInStudy=CT&StudyDate=20260101-20261231"  # a value naming the patient is hidden
    assert result["filter"]["query"] == {"where": shown, "level": "study", "matches": 2, "pages": 2}
    matching = studies["ct-match"] + studies["ct-match-2"]
    exported = sorted(blob.name for blob in storage(env).list_blobs(env["EXPORT_BUCKET"], prefix=f"{folder}/"))
    assert exported == sorted(f"{folder}/{u.study}/{u.series}/{u.sop}.dcm" for u, _ in matching)
    filter_uri = result["filter"]["uri"]
    bucket, _, name = filter_uri[len("gs://"):].partition("/")
    kept = storage(env).bucket(bucket).blob(name).download_as_text().splitlines()
    assert sorted(kept) == sorted({f"/studies/{u.study}" for u, _ in matching})
