"""Google's discovery-based Python client (google-api-python-client) against the emulator.

The calls are the ones the product's Python samples make (``discovery.build``,
``dicomStores().import_(name=..., body=...)``, ``operations().get`` until done,
``list`` with ``list_next``); every answer is read the way such a program reads it.
"""

from __future__ import annotations

import json
import re
from email import message_from_bytes
from email.policy import HTTP
from io import BytesIO

import pydicom
import pytest
import requests
from googleapiclient.errors import HttpError

from localstack.samples import make_series, new_uid
from tests.clients.conftest import dataset_of, wait
from tests.emulator.client import unique

IMPORT_RESPONSE = "type.googleapis.com/google.cloud.healthcare.v1.dicom.ImportDicomDataResponse"
EXPORT_RESPONSE = "type.googleapis.com/google.cloud.healthcare.v1.dicom.ExportDicomDataResponse"
OPERATION_NAME = re.compile(r"projects/[^/]+/locations/[^/]+/datasets/[^/]+/operations/\d{19}")


def error_of(exc: HttpError) -> dict:
    """The Google error object of an HttpError's body."""
    return json.loads(exc.content)["error"]


def test_datasets_create_get_and_list_with_paging(datasets, location):
    ids = [unique("ds") for _ in range(3)]
    for dataset_id in ids:
        operation = datasets.create(parent=location, datasetId=dataset_id, body={"timeZone": "UTC"}).execute()
        assert OPERATION_NAME.fullmatch(operation["name"]) and operation["done"] is True
        assert operation["metadata"]["apiMethodName"] == "google.cloud.healthcare.v1.dataset.DatasetService.CreateDataset"
        assert operation["response"] == {
            "@type": "type.googleapis.com/google.cloud.healthcare.v1.dataset.Dataset",
            "name": f"{location}/datasets/{dataset_id}",
            "timeZone": "UTC",
        }
    names = [f"{location}/datasets/{dataset_id}" for dataset_id in ids]
    assert datasets.get(name=names[1]).execute() == {"name": names[1], "timeZone": "UTC"}

    pages, listed = 0, []
    request = datasets.list(parent=location, pageSize=2)
    while request is not None:
        page = request.execute()
        pages += 1
        listed += [dataset["name"] for dataset in page.get("datasets", [])]
        request = datasets.list_next(request, page)
    assert pages == 2
    assert sorted(listed) == sorted(names)


def test_dicom_stores_create_get_list_delete(datasets, location):
    dataset = f"{location}/datasets/{unique('ds')}"
    datasets.create(parent=location, datasetId=dataset.rsplit("/", 1)[1], body={}).execute()
    stores = datasets.dicomStores()
    created = stores.create(parent=dataset, dicomStoreId="first", body={"labels": {"team": "imaging"}}).execute()
    assert created == {"name": f"{dataset}/dicomStores/first", "labels": {"team": "imaging"}}
    stores.create(parent=dataset, dicomStoreId="second", body={}).execute()
    assert stores.get(name=created["name"]).execute() == created
    listed = stores.list(parent=dataset).execute().get("dicomStores", [])
    assert [s["name"] for s in listed] == [f"{dataset}/dicomStores/first", f"{dataset}/dicomStores/second"]

    assert stores.delete(name=created["name"]).execute() == {}
    with pytest.raises(HttpError) as missing:
        stores.get(name=created["name"]).execute()
    assert missing.value.status_code == 404
    assert error_of(missing.value)["status"] == "NOT_FOUND"
    assert created["name"] in missing.value.reason
    assert [s["name"] for s in stores.list(parent=dataset).execute()["dicomStores"]] == [f"{dataset}/dicomStores/second"]


def test_import_then_operations_get_until_done(datasets, store, upload):
    items = make_series(3)
    for uids, data in items:
        upload(f"incoming/{uids.sop}.dcm", data)
    uri = upload("incoming/readme.txt", b"not DICOM").rsplit("/", 1)[0] + "/*.dcm"

    started = datasets.dicomStores().import_(name=store, body={"gcsSource": {"uri": uri}}).execute()
    assert OPERATION_NAME.fullmatch(started["name"]) and started["name"].startswith(dataset_of(store) + "/operations/")
    done = wait(datasets, started)
    metadata = done["metadata"]
    assert metadata["@type"] == "type.googleapis.com/google.cloud.healthcare.v1.OperationMetadata"
    assert metadata["apiMethodName"] == "google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData"
    assert metadata["counter"] == {"success": "3"}
    assert metadata["createTime"] <= metadata["endTime"]
    assert done["response"] == {"@type": IMPORT_RESPONSE} and "error" not in done

    found = datasets.dicomStores().searchForInstances(parent=store, dicomWebPath="instances").execute()
    assert {i["00080018"]["Value"][0] for i in found} == {uids.sop for uids, _ in items}
    metrics = datasets.dicomStores().getDICOMStoreMetrics(name=store).execute()
    assert (metrics["name"], metrics["studyCount"], metrics["seriesCount"], metrics["instanceCount"]) == (store, "1", "1", "3")
    assert int(metrics["blobStorageSizeBytes"]) == sum(len(data) for _, data in items)


@pytest.fixture
def slow_imports(healthcare_emulator):
    """Imports take at least 5 s (the emulator's fault injection), so a test can catch one running."""
    admin = f"{healthcare_emulator.url}/emulator/faults"
    response = requests.put(admin, json={"methods": {"dicomStores.import": {"minOperationSeconds": 5}}}, timeout=10)
    assert response.status_code == 200, response.text
    yield
    requests.delete(admin, timeout=10)


def test_operations_list_with_paging_and_cancel(datasets, store, upload, slow_imports):
    uids, data = make_series(1)[0]
    uri = upload(f"a/{uids.sop}.dcm", data)
    running = datasets.dicomStores().import_(name=store, body={"gcsSource": {"uri": uri}}).execute()
    current = datasets.operations().get(name=running["name"]).execute()
    assert "done" not in current and "endTime" not in current["metadata"]

    assert datasets.operations().cancel(name=running["name"], body={}).execute() == {}
    cancelled = wait(datasets, running)
    assert cancelled["error"] == {"code": 1, "message": "Operation was cancelled"}
    assert cancelled["metadata"]["cancelRequested"] is True and "response" not in cancelled

    dataset = dataset_of(store)
    listed, request = [], datasets.operations().list(name=dataset, pageSize=1)
    while request is not None:
        page = request.execute()
        listed += page.get("operations", [])
        request = datasets.operations().list_next(request, page)
    methods = [op["metadata"]["apiMethodName"].rsplit(".", 1)[1] for op in listed]
    assert methods == ["CreateDataset", "ImportDicomData"]  # oldest first, one per page
    assert listed[1]["name"] == running["name"] and listed[1]["done"] is True


def test_export_whole_store_and_with_filter_config(datasets, store, upload, bucket, storage_client):
    study = new_uid()
    first, second = make_series(2, study_uid=study), make_series(1, study_uid=study, series_number=2)
    for uids, data in first + second:
        upload(f"in/{uids.sop}.dcm", data)
    wait(datasets, datasets.dicomStores().import_(name=store, body={"gcsSource": {"uri": f"gs://{bucket.name}/in/*"}}).execute())

    everything = wait(datasets, datasets.dicomStores().export(
        name=store, body={"gcsDestination": {"uriPrefix": f"gs://{bucket.name}/all"}}
    ).execute())
    assert everything["response"] == {"@type": EXPORT_RESPONSE}
    assert everything["metadata"]["apiMethodName"] == "google.cloud.healthcare.v1.dicom.DicomService.ExportDicomData"
    assert everything["metadata"]["counter"] == {"success": "3"}
    written = {blob.name: blob for blob in storage_client.list_blobs(bucket.name, prefix="all/")}
    expected = {f"all/{uids.study}/{uids.series}/{uids.sop}.dcm": data for uids, data in first + second}
    assert set(written) == set(expected)
    assert all(written[name].download_as_bytes() == data for name, data in expected.items())

    second_series = second[0][0]
    filter_uri = upload("filters/one-series.txt", f"/studies/{study}/series/{second_series.series}\n".encode())
    filtered = wait(datasets, datasets.dicomStores().export(
        name=store,
        body={"gcsDestination": {"uriPrefix": f"gs://{bucket.name}/some/"}, "filterConfig": {"resourcePathsGcsUri": filter_uri}},
    ).execute())
    assert filtered["metadata"]["counter"] == {"success": "1"}
    assert [b.name for b in storage_client.list_blobs(bucket.name, prefix="some/")] == [
        f"some/{study}/{second_series.series}/{second_series.sop}.dcm"
    ]


def multipart_parts(body: bytes) -> list:
    """The parts of a multipart body, read by Python's MIME parser (the boundary is the body's first line)."""
    boundary = body[2 : body.index(b"\r\n")]
    message = message_from_bytes(b"Content-Type: multipart/related; boundary=" + boundary + b"\r\n\r\n" + body, policy=HTTP)
    return list(message.iter_parts())


def uids_of(results, tag):
    return sorted(r[tag]["Value"][0] for r in results)


def test_dicomweb_searches(datasets, loaded_store):
    store, study_a, items, implicit = loaded_store
    stores = datasets.dicomStores()
    studies = stores.searchForStudies(parent=store, dicomWebPath="studies").execute()
    assert uids_of(studies, "0020000D") == sorted([study_a, implicit[0].study])
    series = stores.searchForSeries(parent=store, dicomWebPath="series").execute()
    assert len(series) == 3
    instances = stores.searchForInstances(parent=store, dicomWebPath="instances").execute()
    assert uids_of(instances, "00080018") == sorted([u.sop for u, _ in items] + [implicit[0].sop])

    in_study = stores.studies().searchForSeries(parent=store, dicomWebPath=f"studies/{study_a}/series").execute()
    assert {s["00080060"]["Value"][0]: s["00201209"]["Value"][0] for s in in_study} == {"CT": 2, "MR": 1}
    ct = items[0][0]
    in_series = stores.studies().series().searchForInstances(
        parent=store, dicomWebPath=f"studies/{study_a}/series/{ct.series}/instances"
    ).execute()
    assert uids_of(in_series, "00080018") == sorted(u.sop for u, _ in items[:2])
    in_study_instances = stores.studies().searchForInstances(parent=store, dicomWebPath=f"studies/{study_a}/instances").execute()
    assert len(in_study_instances) == 3


def test_retrieve_instance(healthcare, healthcare_raw, loaded_store):
    store, _, _, (uids, data) = loaded_store
    instances = healthcare_raw.projects().locations().datasets().dicomStores().studies().series().instances()
    path = f"studies/{uids.study}/series/{uids.series}/instances/{uids.sop}"

    as_stored = instances.retrieveInstance(parent=store, dicomWebPath=path)
    as_stored.headers["accept"] = "application/dicom; transfer-syntax=*"
    assert as_stored.execute() == data  # the bytes as imported, implicit VR

    default = instances.retrieveInstance(parent=store, dicomWebPath=path).execute()  # Accept: */*
    (dicom_part,) = multipart_parts(default)
    assert dicom_part.get_content_type() == "application/dicom"
    transcoded = pydicom.dcmread(BytesIO(dicom_part.get_payload(decode=True)))
    assert transcoded.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # the API's default: explicit VR LE
    assert transcoded.SOPInstanceUID == uids.sop

    with pytest.raises(HttpError) as json_accept:  # the JSON model asks for application/json: the API says 406
        healthcare.projects().locations().datasets().dicomStores().studies().series().instances().retrieveInstance(
            parent=store, dicomWebPath=path
        ).execute()
    assert json_accept.value.status_code == 406
    assert json_accept.value.reason.startswith("no supported media type found in [application/json]")


def test_errors_surface_as_http_error(datasets, store, location):
    stores = datasets.dicomStores()
    dataset = dataset_of(store)
    with pytest.raises(HttpError) as missing:
        datasets.get(name=f"{location}/datasets/nope").execute()
    assert (missing.value.status_code, error_of(missing.value)["status"]) == (404, "NOT_FOUND")
    assert f"{location}/datasets/nope" in missing.value.reason

    with pytest.raises(HttpError) as exists:
        stores.create(parent=dataset, dicomStoreId=store.rsplit("/", 1)[1], body={}).execute()
    assert (exists.value.status_code, error_of(exists.value)["status"]) == (409, "ALREADY_EXISTS")
    assert "already exists" in exists.value.reason

    with pytest.raises(HttpError) as bad_uri:
        stores.import_(name=store, body={"gcsSource": {"uri": "gs://bucket/**/x.dcm"}}).execute()
    assert (bad_uri.value.status_code, error_of(bad_uri.value)["status"]) == (400, "INVALID_ARGUMENT")
    assert "gs://bucket/**/x.dcm" in bad_uri.value.reason
    assert bad_uri.value.error_details[0]["fieldViolations"][0]["field"] == "gcs_source.uri"

    with pytest.raises(HttpError) as too_big:
        datasets.list(parent=location, pageSize=5000).execute()
    assert (too_big.value.status_code, error_of(too_big.value)["status"]) == (400, "INVALID_ARGUMENT")

    with pytest.raises(HttpError) as no_operation:
        datasets.operations().get(name=f"{dataset}/operations/1234567890123456789").execute()
    assert (no_operation.value.status_code, error_of(no_operation.value)["status"]) == (404, "NOT_FOUND")

    with pytest.raises(HttpError) as no_instance:
        datasets.dicomStores().studies().series().instances().retrieveInstance(
            parent=store, dicomWebPath="studies/1.2/series/3.4/instances/5.6"
        ).execute()
    assert (no_instance.value.status_code, error_of(no_instance.value)["status"]) == (404, "NOT_FOUND")


def test_v1beta1_client_exports_with_filter_as_the_how_to_does(healthcare_emulator, store, upload, bucket, storage_client):
    """The how-to page's filtered export uses v1beta1: the v1beta1 discovery document drives the same emulator."""
    from google.auth.credentials import AnonymousCredentials
    from googleapiclient import discovery

    beta = discovery.build("healthcare", "v1beta1", client_options={"api_endpoint": healthcare_emulator.url},
                           credentials=AnonymousCredentials(), static_discovery=True)
    datasets = beta.projects().locations().datasets()
    uids, data = make_series(1)[0]
    uri = upload(f"beta/{uids.sop}.dcm", data)
    imported = wait(datasets, datasets.dicomStores().import_(name=store, body={"gcsSource": {"uri": uri}}).execute())
    assert imported["metadata"]["apiMethodName"] == "google.cloud.healthcare.v1beta1.dicom.DicomService.ImportDicomData"
    filter_uri = upload("beta/filter.txt", f"/studies/{uids.study}\r\n".encode())
    exported = wait(datasets, datasets.dicomStores().export(
        name=store, body={"gcsDestination": {"uriPrefix": f"gs://{bucket.name}/beta-out"},
                          "filterConfig": {"resourcePathsGcsUri": filter_uri}},
    ).execute())
    assert exported["response"]["@type"] == "type.googleapis.com/google.cloud.healthcare.v1beta1.dicom.ExportDicomDataResponse"
    assert [b.name for b in storage_client.list_blobs(bucket.name, prefix="beta-out/")] == [
        f"beta-out/{uids.study}/{uids.series}/{uids.sop}.dcm"
    ]


def test_methods_the_emulator_lacks_are_501_naming_them(datasets, store):
    for request, method_id in (
        (datasets.dicomStores().getIamPolicy(resource=store), "dicomStores.getIamPolicy"),
        (datasets.dicomStores().patch(name=store, updateMask="labels", body={"labels": {"a": "b"}}), "dicomStores.patch"),
        (datasets.dicomStores().dicomWeb().studies().getStudyMetrics(study=f"{store}/dicomWeb/studies/1.2.3"),
         "dicomStores.dicomWeb.studies.getStudyMetrics"),
    ):
        with pytest.raises(HttpError) as lacking:
            request.execute()
        assert (lacking.value.status_code, error_of(lacking.value)["status"]) == (501, "UNIMPLEMENTED")
        assert lacking.value.reason.startswith(f"{method_id} (")


def injected_errors(emulator) -> int:
    stats = requests.get(f"{emulator.url}/emulator/stats", params={"view": "full"}, timeout=10).json()
    return sum(stats["injectedErrors"].get("dicomStores.get", {}).values())


def test_injected_429_and_503_are_retried_by_the_client(healthcare_emulator, datasets, store, monkeypatch):
    """execute(num_retries=N) retries 429 and 5xx with backoff: the emulator's injected faults look retryable to it."""
    import time

    faults = f"{healthcare_emulator.url}/emulator/faults"
    spec = {"seed": 3, "methods": {"dicomStores.get": {"rate429": 0.5, "rate503": 0.3}}}
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # the client's backoff, without the wait
    try:
        assert requests.put(faults, json=spec, timeout=10).status_code == 200
        with pytest.raises(HttpError) as first:
            datasets.dicomStores().get(name=store).execute()  # no retries: the first draw is a fault
        assert first.value.status_code in (429, 503) and "injected by the emulator" in first.value.reason
        assert requests.put(faults, json=spec, timeout=10).status_code == 200  # same seed, same draws
        before = injected_errors(healthcare_emulator)
        assert datasets.dicomStores().get(name=store).execute(num_retries=10) == {"name": store}
        assert len(slept) == injected_errors(healthcare_emulator) - before >= 2  # one backoff per injected error
    finally:
        requests.delete(faults, timeout=10)
