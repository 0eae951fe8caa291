"""Per-file errors as Cloud Logging LogEntry objects, served by ``POST /v2/entries:list``; DICOMweb DeleteInstance."""

from __future__ import annotations

import time

import pytest

from localstack.samples import bundled_bytes, make_instance, make_series, new_uid, with_new_uids
from tests.emulator.client import assert_google_error, counter

IMPORT_TYPE = "type.googleapis.com/google.cloud.healthcare.logging.ImportDicomLogEntry"
EXPORT_TYPE = "type.googleapis.com/google.cloud.healthcare.logging.ExportDicomLogEntry"
CONFLICT = ("An instance already exists in this DICOM Store with the same Study/Series/SOPInstance UID, "
            "but the DICOM files differ (checksum mismatch).")


def entries_list(api, body):
    return api.session.post(f"{api.url}/v2/entries:list", json=body, timeout=30)


def list_all(api, project, query, page_size=None, order=None):
    """Every page of entries.list; (entries, pages)."""
    found, token, pages = [], None, 0
    while True:
        body = {"resourceNames": [f"projects/{project}"], "filter": query}
        if page_size:
            body["pageSize"] = page_size
        if order:
            body["orderBy"] = order
        if token:
            body["pageToken"] = token
        response = entries_list(api, body)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        found += page.get("entries", [])
        token = page.get("nextPageToken")
        if not token:
            return found, pages


def operation_query(name: str) -> str:
    """The query the function sends: both forms of operation.id, the payload type, the resource type."""
    return (f'resource.type="healthcare_dicom_store" AND jsonPayload."@type"="{IMPORT_TYPE}" AND '
            f'(operation.id="{name}" OR operation.id="{name.rsplit("/", 1)[-1]}")')


@pytest.fixture
def bad_drop(api, store, upload):
    """A store holding one instance; a folder with it re-sent changed, plus empty, text and truncated files."""
    study, series, sop = new_uid(), new_uid(), new_uid()
    api.import_and_wait(store, upload("first/a.dcm", make_instance(study, series, sop)))
    valid = make_instance(new_uid(), new_uid(), new_uid())
    files = {
        "drop/changed.dcm": make_instance(study, series, sop, patient_name="Changed^Name"),
        "drop/empty.dcm": b"",
        "drop/text.dcm": b"radiology report, not DICOM\n" * 20,
        "drop/truncated.dcm": valid[: len(valid) - 40],
        "drop/valid.dcm": make_instance(new_uid(), new_uid(), new_uid()),
    }
    uris = {name: upload(name, data) for name, data in files.items()}
    bucket_uri = uris["drop/valid.dcm"].rsplit("/drop/", 1)[0]
    return uris, f"{bucket_uri}/drop/*"


def test_each_failed_file_is_a_log_entry_shaped_like_the_apis(api, store, bad_drop):
    uris, pattern = bad_drop
    done = api.import_and_wait(store, pattern)
    assert counter(done) == {"success": "1", "failure": "4"}
    project = store.name.split("/")[1]
    entries, _ = list_all(api, project, operation_query(done["name"]))
    by_source = {e["jsonPayload"]["source"]: e for e in entries}
    assert set(by_source) == {uris[n] for n in ("drop/changed.dcm", "drop/empty.dcm", "drop/text.dcm",
                                                "drop/truncated.dcm")}
    empty = by_source[uris["drop/empty.dcm"]]
    _, _, location, _, dataset, _, store_id = store.name.split("/")[1:]
    assert empty["logName"] == f"projects/{project}/logs/healthcare.googleapis.com%2Fimport_dicom"
    assert empty["resource"] == {"type": "healthcare_dicom_store", "labels": {
        "project_id": project, "location": location, "dataset_id": dataset, "dicom_store_id": store_id}}
    assert empty["severity"] == "ERROR" and empty["operation"]["id"] == done["name"]
    assert empty["operation"]["producer"] == "healthcare.googleapis.com"
    assert empty["jsonPayload"] == {"@type": IMPORT_TYPE, "source": uris["drop/empty.dcm"],
                                    "error": {"code": 3, "message": "empty DICOM instance found"}}
    assert {"insertId", "timestamp", "receiveTimestamp"} <= set(empty)
    assert by_source[uris["drop/changed.dcm"]]["jsonPayload"]["error"]["message"] == CONFLICT
    assert "truncated" in by_source[uris["drop/truncated.dcm"]]["jsonPayload"]["error"]["message"]
    assert "not a DICOM file" in by_source[uris["drop/text.dcm"]]["jsonPayload"]["error"]["message"]
    assert list_all(api, "another-project", operation_query(done["name"]))[0] == [], "entries belong to their project"
    since_a_date, _ = list_all(api, project, f'({operation_query(done["name"])}) AND timestamp>="2000-01-01"')
    assert len(since_a_date) == 4, "a date alone is a UTC time (a 500 before: naive and aware times compared)"


def test_each_instance_an_export_fails_is_an_export_dicom_log_entry(api, store, upload, bucket):
    """Two structured reports (no pixel data) cannot be exported as PNG: one entry each, listed like an import's."""
    reports = [with_new_uids(bundled_bytes("test-SR.dcm")) for _ in range(2)]
    image = make_series(1)
    folder = [upload(f"export-src/{uids.sop}.dcm", data) for uids, data in reports + image][0].rsplit("/", 1)[0]
    assert counter(api.import_and_wait(store, f"{folder}/*.dcm")) == {"success": "3"}
    done = api.wait(api.start_export(store, {"gcsDestination": {"uriPrefix": f"gs://{bucket.name}/png",
                                                                 "mimeType": "image/png"}}))
    assert counter(done) == {"success": "1", "failure": "2"}
    project = store.name.split("/")[1]
    _, _, location, _, dataset, _, store_id = store.name.split("/")[1:]
    query = (f'resource.type="healthcare_dicom_store" AND jsonPayload."@type"="{EXPORT_TYPE}" AND '
             f'operation.id="{done["name"]}"')

    entries, _ = list_all(api, project, query)

    sources = {f"{store.name}/dicomWeb/studies/{u.study}/series/{u.series}/instances/{u.sop}" for u, _ in reports}
    assert sorted(e["jsonPayload"]["source"] for e in entries) == sorted(sources), "one entry per failed instance"
    for entry in entries:
        assert entry["logName"] == f"projects/{project}/logs/healthcare.googleapis.com%2Fexport_dicom"
        assert entry["logName"].endswith("healthcare.googleapis.com%2Fexport_dicom")
        assert entry["jsonPayload"]["@type"] == EXPORT_TYPE and entry["severity"] == "ERROR"
        error = entry["jsonPayload"]["error"]
        assert error["code"] == 9 and "no pixel data" in error["message"], "FAILED_PRECONDITION, with the reason"
        assert entry["resource"] == {"type": "healthcare_dicom_store", "labels": {
            "project_id": project, "location": location, "dataset_id": dataset, "dicom_store_id": store_id}}
        assert entry["operation"] == {"id": done["name"], "producer": "healthcare.googleapis.com"}
    assert list_all(api, project, operation_query(done["name"]))[0] == [], "no ImportDicomLogEntry for an export"
    by_log, _ = list_all(api, project, f'logName="projects/{project}/logs/healthcare.googleapis.com%2Fexport_dicom" '
                                       f'AND operation.id="{done["name"]}"')
    assert len(by_log) == 2


def test_paging_ordering_and_the_last_segment_form_of_operation_id(api, store, bad_drop, settings):
    settings({"logOperationId": "id"})
    uris, pattern = bad_drop
    done = api.import_and_wait(store, pattern)
    project = store.name.split("/")[1]
    op_id = done["name"].rsplit("/", 1)[-1]
    entries, pages = list_all(api, project, operation_query(done["name"]), page_size=1)
    assert len(entries) == 4 and pages == 4 and {e["operation"]["id"] for e in entries} == {op_id}
    assert list_all(api, project, f'operation.id="{done["name"]}"')[0] == [], "only the id form was written"
    newest_first, _ = list_all(api, project, f'operation.id="{op_id}"', order="timestamp desc")
    assert [e["timestamp"] for e in newest_first] == sorted((e["timestamp"] for e in entries), reverse=True)


@pytest.mark.parametrize("body, fragment", [
    ({"filter": "severity=ERROR"}, "resourceNames is required"),
    ({"resourceNames": ["organizations/1"]}, "not supported by the emulator"),
    ({"resourceNames": ["projects/p"], "filter": '"just text"'}, "global restrictions"),
    ({"resourceNames": ["projects/p"], "filter": "(severity=ERROR"}, "the filter ends"),
    ({"resourceNames": ["projects/p"], "filter": "severity=ERROR) OR x=1"}, "unexpected ')' at character 15"),
    ({"resourceNames": ["projects/p"], "filter": 'jsonPayload.source=~"x"'}, "regular expressions"),
    ({"resourceNames": ["projects/p"], "filter": 'timestamp>="last week"'}, "not an RFC 3339 time"),
    ({"resourceNames": ["projects/p"], "orderBy": "severity"}, "orderBy must be one of"),
    ({"resourceNames": ["projects/p"], "pageSize": 1001}, "pageSize must be an integer between 0 and 1000"),
    ({"resourceNames": ["projects/p"], "pageToken": "made-up"}, "pageToken"),
    ({"resourceNames": ["projects/p"], "limit": 3}, 'Unknown name "limit"'),
    ({"resourceNames": 5}, "resourceNames must be a list"),
    ({"resourceNames": ["projects/p"], "projectIds": "p"}, "projectIds must be a list"),
])
def test_requests_it_cannot_serve_exactly_are_refused_naming_the_part(api, body, fragment):
    assert_google_error(entries_list(api, body), 400, "INVALID_ARGUMENT", fragment)


def test_ingestion_delay_and_sampling_faults(api, store, bad_drop, faults):
    uris, pattern = bad_drop
    faults({"methods": {"dicomStores.import": {"logDelaySeconds": 1.5, "logSampleAbove": 2}}})
    done = api.import_and_wait(store, pattern)
    assert counter(done)["failure"] == "4", "sampling drops log entries, not failures"
    project = store.name.split("/")[1]
    assert list_all(api, project, operation_query(done["name"]))[0] == [], "not ingested yet"
    time.sleep(1.6)
    assert len(list_all(api, project, operation_query(done["name"]))[0]) == 2, "at most logSampleAbove entries"


def test_entries_list_is_counted_and_takes_faults(api, faults):
    before = api.stats().get("entries.list", 0)
    faults({"methods": {"entries.list": {"rate503": 1.0}}})
    assert_google_error(entries_list(api, {"resourceNames": ["projects/p"]}), 503, "UNAVAILABLE", "rate503")
    assert api.stats()["entries.list"] == before + 1


def test_delete_instance_removes_it_and_a_changed_file_can_then_be_imported(api, store, upload):
    study, series, sop = new_uid(), new_uid(), new_uid()
    api.import_and_wait(store, upload("d/a.dcm", make_instance(study, series, sop)))
    changed = make_instance(study, series, sop, patient_name="New^Name")
    path = f"{store.web}/studies/{study}/series/{series}/instances/{sop}"
    assert counter(api.import_and_wait(store, upload("d/b.dcm", changed))) == {"failure": "1"}
    deletes_before = api.stats().get("dicomStores.studies.series.instances.delete", 0)  # other tests delete too

    assert api.ok("DELETE", path) == {}
    assert sop not in api.sop_uids(store)
    assert_google_error(api.call("GET", path), 404, "NOT_FOUND", sop)
    assert_google_error(api.call("DELETE", path), 404, "NOT_FOUND", sop)
    assert api.stats()["dicomStores.studies.series.instances.delete"] == deletes_before + 2

    assert counter(api.import_and_wait(store, upload("d/c.dcm", changed))) == {"success": "1"}
    stored = api.call("GET", path, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert stored.status_code == 200 and stored.content == changed, "WADO returns the new bytes"
