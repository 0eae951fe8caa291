"""dicomStores.import: the seed page's wildcards through real imports, operations, counters, outcomes."""

import re
import time
from io import BytesIO

import pydicom
import pytest

from localstack.samples import make_instance, new_uid
from tests.emulator.client import assert_google_error, counter


def dicom() -> tuple[str, bytes]:
    """(SOP Instance UID, bytes) of a fresh instance."""
    sop = new_uid()
    return sop, make_instance(new_uid(), new_uid(), sop)


SEED_NAMES = [
    "DIRECTORY/Example.dcm",
    "DIRECTORY/Example22.dcm",
    "DIRECTORY/Example1.dcm",
    "DIRECTORY/Example01.dcm",
    "DIRECTORY/Example/22.dcm",
    "DIRECTORY/sub/dir/deep.dcm",
    "DIRECTORY/Other.dcm",
    "DIRECTORY/notes.dcm.txt",
    "ELSEWHERE/Example1.dcm",
]


@pytest.mark.parametrize(
    "pattern, expected",
    [
        # The seed page's examples: * within a folder, ** across folders, ? one character.
        ("DIRECTORY/Example*.dcm", {"DIRECTORY/Example.dcm", "DIRECTORY/Example22.dcm", "DIRECTORY/Example1.dcm",
                                    "DIRECTORY/Example01.dcm"}),
        ("DIRECTORY/**.dcm", {n for n in SEED_NAMES if n.startswith("DIRECTORY/") and n.endswith(".dcm")}),
        ("DIRECTORY/Example?.dcm", {"DIRECTORY/Example1.dcm"}),
        ("DIRECTORY/Example1.dcm", {"DIRECTORY/Example1.dcm"}),
    ],
)
def test_seed_page_wildcards_import_exactly_the_matching_objects(api, store, upload, pattern, expected):
    sop_of = {}
    bucket_uri = ""
    for name in SEED_NAMES:
        sop, data = dicom()
        bucket_uri = upload(name, data).rsplit("/" + name, 1)[0]
        sop_of[name] = sop
    done = api.import_and_wait(store, f"{bucket_uri}/{pattern}")
    assert "error" not in done, done
    assert counter(done) == {"success": str(len(expected))}
    assert api.sop_uids(store) == {sop_of[name] for name in expected}


@pytest.mark.parametrize(
    "uri, fragment",
    [
        ("gs://{b}/DIRECTORY/**/x.dcm", "'**' must be at the end of the path"),
        ("gs://{b}/**/*.dcm", "mixes '**' with other wildcards"),
        ("gs://{b}/DIR/***.dcm", "'***'"),
        ("gs://{b}*/x.dcm", "wildcards are allowed only in the object part"),
        ("gs://{b}", "names no object"),
        ("s3://{b}/x.dcm", "is not a Cloud Storage URI"),
        ("gs://B_Upper/x.dcm", "not a valid bucket name"),
    ],
)
def test_invalid_uris_are_refused_with_400_naming_the_problem(api, store, bucket, uri, fragment):
    before = api.ok("GET", f"{store.dataset}/operations").get("operations", [])
    response = api.call("POST", f"{store.name}:import", json={"gcsSource": {"uri": uri.format(b=bucket.name)}})
    error = assert_google_error(response, 400, "INVALID_ARGUMENT", fragment)
    assert error["details"][0]["fieldViolations"][0]["field"] == "gcs_source.uri"
    assert api.ok("GET", f"{store.dataset}/operations").get("operations", []) == before  # no operation started


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({}, "gcsSource.uri is required"),
        ({"gcsSource": {}}, "gcsSource.uri is required"),
        ({"gcsSource": {"uri": "gs://bucket-x/a.dcm"}, "extra": 1}, 'Unknown name "extra"'),
        ({"gcsSource": {"uri": "gs://bucket-x/a.dcm"}, "blobStorageSettings": {"blobStorageClass": "COLD"}},
         "blobStorageClass"),
    ],
)
def test_invalid_bodies_are_refused(api, store, body, fragment):
    assert_google_error(api.call("POST", f"{store.name}:import", json=body), 400, "INVALID_ARGUMENT", fragment)


def test_import_into_a_missing_store_is_404(api, store, upload):
    uri = upload("a.dcm", dicom()[1])
    response = api.call("POST", f"{store.dataset}/dicomStores/absent:import", json={"gcsSource": {"uri": uri}})
    assert_google_error(response, 404, "NOT_FOUND", "dicomStores/absent")


def test_running_then_done_operation_shapes_and_pending_counting_down(api, store, bucket, upload, faults):
    for index in range(4):
        upload(f"in/{index}.dcm", dicom()[1])
    faults({"methods": {"dicomStores.import": {"minOperationSeconds": 1.2}}})
    started = api.start_import(store, f"gs://{bucket.name}/in/*.dcm")
    assert re.fullmatch(rf"{store.dataset}/operations/\d+", started["name"])
    assert "done" not in started and "error" not in started and "response" not in started
    metadata = started["metadata"]
    assert metadata["@type"] == "type.googleapis.com/google.cloud.healthcare.v1.OperationMetadata"
    assert metadata["apiMethodName"] == "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"
    assert "endTime" not in metadata and "cancelRequested" not in metadata
    operation_id = started["name"].rsplit("/", 1)[1]
    assert operation_id in metadata["logsUrl"] and metadata["logsUrl"].startswith("https://console.cloud.google.com/logs/")

    seen_pending = []
    while True:
        current = api.ok("GET", started["name"])
        if current.get("done"):
            break
        pending = counter(current).get("pending")
        if pending is not None:
            seen_pending.append(int(pending))
        time.sleep(0.05)
    assert seen_pending and seen_pending == sorted(seen_pending, reverse=True)
    assert max(seen_pending) <= 4 and seen_pending[0] > seen_pending[-1]
    assert current["done"] is True
    assert current["response"] == {"@type": "type.googleapis.com/google.cloud.healthcare.v1.dicom.ImportDicomDataResponse"}
    assert counter(current) == {"success": "4"}  # strings; failure and pending absent when zero
    assert current["metadata"]["endTime"] >= current["metadata"]["createTime"]


def test_duplicate_with_same_bytes_is_ignored_and_counted_as_success(api, store, upload):
    sop, data = dicom()
    first = upload("first.dcm", data)
    second = upload("copy/same.dcm", data)
    assert counter(api.import_and_wait(store, first)) == {"success": "1"}
    again = api.import_and_wait(store, second)
    assert "response" in again and counter(again) == {"success": "1"}
    assert api.sop_uids(store) == {sop}
    assert any("duplicate" in e["message"] and e["object"] == second for e in api.logs(again))


def test_same_uids_with_other_bytes_fail_with_checksum_mismatch(api, store, bucket, upload):
    study, series, sop = new_uid(), new_uid(), new_uid()
    upload("a/one.dcm", make_instance(study, series, sop, pixel_seed=1))
    conflicting = upload("a/two.dcm", make_instance(study, series, sop, pixel_seed=2))
    done = api.import_and_wait(store, f"gs://{bucket.name}/a/*.dcm")
    assert counter(done) == {"success": "1", "failure": "1"}
    # Default style for a partial failure: error, code 3 (documented in docs/emulator.md).
    assert done["error"]["code"] == 3 and "1 of 2" in done["error"]["message"]
    assert "response" not in done
    errors = [e for e in api.logs(done) if e["severity"] == "ERROR" and e.get("object")]
    assert len(errors) == 1 and errors[0]["object"] == conflicting and "checksum mismatch" in errors[0]["message"]
    stored = api.call("GET", f"{store.web}/studies/{study}/series/{series}/instances/{sop}",
                      headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert stored.content == make_instance(study, series, sop, pixel_seed=1)  # never overwritten


def test_partial_failure_can_end_with_a_response(api, store, bucket, upload, settings):
    settings({"partialFailure": "response"})
    upload("m/good.dcm", dicom()[1])
    upload("m/bad.dcm", b"this is not DICOM")
    done = api.import_and_wait(store, f"gs://{bucket.name}/m/*")
    assert done["response"]["@type"].endswith("ImportDicomDataResponse") and "error" not in done
    assert counter(done) == {"success": "1", "failure": "1"}


def test_partial_failure_code_is_configurable(api, store, bucket, upload, settings):
    settings({"partialFailureCode": 13})
    upload("m/good.dcm", dicom()[1])
    upload("m/bad.dcm", b"nope")
    assert api.import_and_wait(store, f"gs://{bucket.name}/m/*")["error"]["code"] == 13


def test_non_dicom_and_missing_uids_fail_per_file_and_all_failed_is_an_error(api, store, bucket, upload, settings):
    settings({"partialFailure": "response"})  # even so: nothing imported means error
    text = upload("bad/readme.dcm", b"hello, not a DICOM file" * 10)
    ds = pydicom.dcmread(BytesIO(dicom()[1]))
    del ds.SOPInstanceUID
    buffer = BytesIO()
    ds.save_as(buffer)
    no_uid = upload("bad/no-sop-uid.dcm", buffer.getvalue())
    done = api.import_and_wait(store, f"gs://{bucket.name}/bad/*.dcm")
    assert counter(done) == {"failure": "2"}
    assert done["error"]["code"] == 3 and "all 2" in done["error"]["message"]
    messages = {e["object"]: e["message"] for e in api.logs(done) if e.get("object")}
    assert "not a DICOM file" in messages[text]
    assert "SOPInstanceUID" in messages[no_uid]
    assert api.sop_uids(store) == set()


def test_no_matching_object_is_a_not_found_error(api, store, bucket, upload):
    upload("x/a.txt", b"x")
    done = api.import_and_wait(store, f"gs://{bucket.name}/x/*.dcm")
    assert done["error"]["code"] == 5 and "no object" in done["error"]["message"]
    assert counter(done) == {}


def test_missing_bucket_is_a_not_found_error(api, store):
    done = api.import_and_wait(store, "gs://no-such-bucket-for-emulator/x/*.dcm")
    assert done["error"]["code"] == 5 and "gs://no-such-bucket-for-emulator" in done["error"]["message"]


def test_cancel_ends_with_cancelled(api, store, bucket, upload, faults):
    upload("c/a.dcm", dicom()[1])
    upload("c/b.dcm", dicom()[1])
    faults({"methods": {"dicomStores.import": {"minOperationSeconds": 30}}})
    started = api.start_import(store, f"gs://{bucket.name}/c/*.dcm")
    assert api.ok("POST", f"{started['name']}:cancel") == {}
    done = api.wait(started, timeout=5)
    assert done["error"] == {"code": 1, "message": "Operation was cancelled"}
    assert done["metadata"]["cancelRequested"] is True
    assert "pending" not in counter(done)
    assert api.ok("POST", f"{started['name']}:cancel") == {}  # cancelling a finished operation is harmless


def test_operations_list_pages_and_get_missing(api, store, upload):
    uri = upload("o/a.dcm", dicom()[1])
    for _ in range(3):
        api.import_and_wait(store, uri)
    listed = api.ok("GET", f"{store.dataset}/operations", params={"pageSize": 2, "filter": "done=true"})
    assert len(listed["operations"]) == 2
    rest = api.ok("GET", f"{store.dataset}/operations", params={"pageSize": 2, "pageToken": listed["nextPageToken"]})
    assert len(rest["operations"]) == 2 and "nextPageToken" not in rest  # 3 imports + the dataset's creation
    names = [op["name"] for op in listed["operations"] + rest["operations"]]
    assert len(set(names)) == 4 and all(n.startswith(f"{store.dataset}/operations/") for n in names)
    assert_google_error(api.call("GET", f"{store.dataset}/operations/123"), 404, "NOT_FOUND", "operations/123")
    assert_google_error(
        api.call("GET", f"{store.dataset}/operations", params={"pageToken": listed["nextPageToken"][:-2]}),
        400, "INVALID_ARGUMENT",
    )


def test_logs_of_an_unknown_operation_is_404(api):
    assert_google_error(api.admin("GET", "logs", params={"operation": "999"}), 404, "NOT_FOUND", "999")


def test_listing_follows_cloud_storage_pages(fake_gcs, bucket, upload, monkeypatch):
    from emulator import gcs

    for index in range(5):
        upload(f"p/{index}", b"x")
    upload("q/other", b"x")
    monkeypatch.setattr(gcs, "LIST_PAGE", 2)
    client = gcs.Gcs(fake_gcs.url)
    try:
        assert list(client.list_names(bucket.name, "p/")) == [f"p/{i}" for i in range(5)]
    finally:
        client.close()


def test_the_seed_page_curl_body_with_single_quotes_is_accepted(api, store, bucket, upload):
    sop, data = dicom()
    upload("top.dcm", data)
    body = "{ 'gcsSource': { 'uri': 'gs://%s/*.dcm' } }" % bucket.name  # as in the how-to's curl example
    response = api.call("POST", f"{store.name}:import", data=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200, response.text
    assert counter(api.wait(response.json())) == {"success": "1"}
    assert api.sop_uids(store) == {sop}


def test_concurrent_imports_of_the_same_objects_store_each_instance_once(api, store, bucket, upload):
    sops = set()
    for index in range(10):
        sop, data = dicom()
        sops.add(sop)
        upload(f"same/{index}.dcm", data)
    started = [api.start_import(store, f"gs://{bucket.name}/same/*.dcm") for _ in range(3)]
    finished = [api.wait(operation) for operation in started]
    assert [counter(done) for done in finished] == [{"success": "10"}] * 3  # duplicates are successes
    assert len(api.qido(store, "instances")) == 10 and api.sop_uids(store) == sops
