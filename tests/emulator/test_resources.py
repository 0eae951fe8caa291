"""Datasets and DICOM stores: create, get, list (paged), delete, and the error bodies."""

import base64
import json
import re
import socket
from urllib.parse import urlsplit

import pytest

from tests.emulator.client import PROJECT, Api, assert_google_error, unique

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def test_dataset_create_returns_a_finished_operation_with_the_dataset(api: Api):
    parent = f"projects/{PROJECT}/locations/{unique('loc')}"
    operation = api.ok("POST", f"{parent}/datasets", params={"datasetId": "ds1"}, json={"timeZone": "Europe/Paris"})
    assert re.fullmatch(rf"{parent}/datasets/ds1/operations/\d+", operation["name"])
    assert operation["done"] is True
    assert operation["response"] == {
        "@type": "type.googleapis.com/google.cloud.healthcare.v1.dataset.Dataset",
        "name": f"{parent}/datasets/ds1",
        "timeZone": "Europe/Paris",
    }
    metadata = operation["metadata"]
    assert metadata["@type"] == "type.googleapis.com/google.cloud.healthcare.v1.OperationMetadata"
    assert metadata["apiMethodName"] == "google.cloud.healthcare.v1.dataset.DatasetService.CreateDataset"
    assert RFC3339.fullmatch(metadata["createTime"]) and RFC3339.fullmatch(metadata["endTime"])
    assert api.ok("GET", f"{parent}/datasets/ds1") == {"name": f"{parent}/datasets/ds1", "timeZone": "Europe/Paris"}
    assert api.ok("GET", operation["name"]) == operation


def test_dataset_errors_use_the_google_body(api: Api):
    parent = f"projects/{PROJECT}/locations/{unique('loc')}"
    api.ok("POST", f"{parent}/datasets", params={"datasetId": "twice"})
    assert_google_error(api.call("POST", f"{parent}/datasets", params={"datasetId": "twice"}), 409, "ALREADY_EXISTS", "twice")
    error = assert_google_error(api.call("POST", f"{parent}/datasets"), 400, "INVALID_ARGUMENT", "datasetId is required")
    assert error["details"][0]["fieldViolations"][0]["field"] == "dataset_id"
    assert_google_error(api.call("POST", f"{parent}/datasets", params={"datasetId": "a/b c"}), 400, "INVALID_ARGUMENT")
    assert_google_error(api.call("GET", f"{parent}/datasets/missing"), 404, "NOT_FOUND", f"{parent}/datasets/missing")
    assert_google_error(
        api.call("POST", f"{parent}/datasets", params={"datasetId": "x"}, data="{not json"), 400, "INVALID_ARGUMENT",
        "Invalid JSON payload",
    )
    assert_google_error(
        api.call("POST", f"{parent}/datasets", params={"datasetId": "y"}, json={"colour": "red"}),
        400, "INVALID_ARGUMENT", 'Unknown name "colour"',
    )


def test_dataset_list_pages_and_delete(api: Api):
    parent = f"projects/{PROJECT}/locations/{unique('loc')}"
    assert api.ok("GET", f"{parent}/datasets") == {}  # empty lists are omitted, as in proto3 JSON
    for name in ("a", "b", "c"):
        api.ok("POST", f"{parent}/datasets", params={"datasetId": name})
    first = api.ok("GET", f"{parent}/datasets", params={"pageSize": 2})
    assert [d["name"] for d in first["datasets"]] == [f"{parent}/datasets/a", f"{parent}/datasets/b"]
    second = api.ok("GET", f"{parent}/datasets", params={"pageSize": 2, "pageToken": first["nextPageToken"]})
    assert second == {"datasets": [{"name": f"{parent}/datasets/c"}]}
    assert_google_error(api.call("GET", f"{parent}/datasets", params={"pageToken": "bogus"}), 400, "INVALID_ARGUMENT", "pageToken")
    huge_offset = base64.urlsafe_b64encode(b'{"l":"x","o":1e999}').decode()
    assert_google_error(api.call("GET", f"{parent}/datasets", params={"pageToken": huge_offset}), 400,
                        "INVALID_ARGUMENT", "pageToken")
    assert_google_error(api.call("GET", f"{parent}/datasets", params={"pageSize": 1001}), 400, "INVALID_ARGUMENT", "pageSize")
    assert api.ok("DELETE", f"{parent}/datasets/b") == {}
    assert [d["name"] for d in api.ok("GET", f"{parent}/datasets")["datasets"]] == [
        f"{parent}/datasets/a",
        f"{parent}/datasets/c",
    ]
    assert_google_error(api.call("DELETE", f"{parent}/datasets/b"), 404, "NOT_FOUND")


def test_store_create_get_list_delete(api: Api):
    dataset = api.new_store().dataset
    labels = {"team_name": "imaging"}
    created = api.ok("POST", f"{dataset}/dicomStores", params={"dicomStoreId": "s1"}, json={"labels": labels})
    assert created == {"name": f"{dataset}/dicomStores/s1", "labels": labels}  # the resource, not an operation
    assert api.ok("GET", f"{dataset}/dicomStores/s1") == created
    assert_google_error(api.call("POST", f"{dataset}/dicomStores", params={"dicomStoreId": "s1"}), 409, "ALREADY_EXISTS")
    assert_google_error(api.call("POST", f"{dataset}/dicomStores"), 400, "INVALID_ARGUMENT", "dicomStoreId is required")
    names = [s["name"] for s in api.ok("GET", f"{dataset}/dicomStores")["dicomStores"]]
    assert f"{dataset}/dicomStores/s1" in names and len(names) == 2
    page = api.ok("GET", f"{dataset}/dicomStores", params={"pageSize": 1})
    assert len(page["dicomStores"]) == 1 and page["nextPageToken"]
    assert api.ok("DELETE", f"{dataset}/dicomStores/s1") == {}
    assert_google_error(api.call("GET", f"{dataset}/dicomStores/s1"), 404, "NOT_FOUND", "dicomStores/s1")


def test_store_in_missing_dataset_and_dataset_delete_removes_stores(api: Api):
    store = api.new_store()
    missing = f"projects/{PROJECT}/locations/{store.location}/datasets/nope"
    assert_google_error(api.call("POST", f"{missing}/dicomStores", params={"dicomStoreId": "s"}), 404, "NOT_FOUND")
    api.ok("DELETE", store.dataset)
    assert_google_error(api.call("GET", store.name), 404, "NOT_FOUND")
    assert_google_error(api.call("GET", f"{store.dataset}/operations"), 404, "NOT_FOUND")


def test_v1beta1_is_served_with_its_own_types(api: Api):
    parent = f"projects/{PROJECT}/locations/{unique('loc')}"
    response = api.call("POST", f"{parent}/datasets", version="v1beta1", params={"datasetId": "beta"})
    assert response.status_code == 200
    metadata = response.json()["metadata"]
    assert metadata["@type"] == "type.googleapis.com/google.cloud.healthcare.v1beta1.OperationMetadata"
    assert metadata["apiMethodName"] == "google.cloud.healthcare.v1beta1.dataset.DatasetService.CreateDataset"
    assert api.call("GET", f"{parent}/datasets/beta", version="v1").status_code == 200


def test_unknown_paths_versions_and_verbs(api: Api):
    store = api.new_store()
    assert_google_error(api.call("GET", "projects/p/somewhere"), 404, "NOT_FOUND", "no Cloud Healthcare API method")
    assert_google_error(api.call("GET", store.name, version="v2"), 404, "NOT_FOUND", "v1beta1")
    assert_google_error(api.call("PATCH", store.name), 501, "UNIMPLEMENTED", "dicomStores.get")
    response = api.session.get(f"{api.url}/")
    assert_google_error(response, 404, "NOT_FOUND")


def test_snake_case_fields_are_accepted_like_proto3_json(api: Api):
    dataset = api.new_store().dataset
    created = api.ok(
        "POST", f"{dataset}/dicomStores", params={"dicomStoreId": "snake"},
        json={"notification_config": {"pubsub_topic": "projects/p/topics/t"}},
    )
    assert created["notificationConfig"] == {"pubsubTopic": "projects/p/topics/t"}


@pytest.mark.parametrize("resource, body, path", [
    ("dicomStores", {"labels": "x"}, "dicom_store.labels"),
    ("dicomStores", {"labels": {"team": 5}}, "dicom_store.labels"),
    ("dicomStores", {"notificationConfig": "projects/p/topics/t"}, "dicom_store.notification_config"),
    ("dicomStores", {"notificationConfigs": {"pubsubTopic": "t"}}, "dicom_store.notification_configs"),
    ("dicomStores", {"streamConfigs": ["x"]}, "dicom_store.stream_configs"),
    ("datasets", {"timeZone": 1}, "dataset.time_zone"),
    ("datasets", {"encryptionSpec": "key"}, "dataset.encryption_spec"),
])
def test_echoed_fields_of_the_wrong_type_are_refused_naming_the_field(api: Api, resource, body, path):
    store = api.new_store()
    url, id_param = (f"{store.dataset}/dicomStores", "dicomStoreId") if resource == "dicomStores" else (
        f"projects/{PROJECT}/locations/{store.location}/datasets", "datasetId")
    error = assert_google_error(api.call("POST", url, params={id_param: unique("x")}, json=body), 400,
                                "INVALID_ARGUMENT", f"Invalid value at '{path}'")
    assert error["details"][0]["fieldViolations"][0]["field"] == path
    assert api.ok("POST", url, params={id_param: unique("x")}, json={k: None for k in body}).keys() >= {"name"}


def _raw_send(api: Api, method: str, path: str, content_type: str, chunks: bytes) -> tuple[int, dict]:
    """``chunks`` as a chunked body on a raw socket, then the sending side closed; (status, JSON answer)."""
    host, port = urlsplit(api.url).hostname, urlsplit(api.url).port
    with socket.create_connection((host, port), timeout=10) as connection:
        connection.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
                           f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode() + chunks)
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while data := connection.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("chunks", [b"zz\r\nabc\r\n0\r\n\r\n", b"100\r\nonly a few bytes of 256"],
                         ids=["bad chunk header", "chunk cut short"])
@pytest.mark.parametrize("method, path, content_type", [
    ("POST", "/v1/{store}/dicomWeb/studies", 'multipart/related; type="application/dicom"; boundary=b'),
    ("POST", "/v1/{dataset}/dicomStores?dicomStoreId=s", "application/json"),
    ("POST", "/v2/entries:list", "application/json"),
    ("PUT", "/emulator/faults", "application/json"),
])
def test_a_body_that_cannot_be_read_whole_is_a_400_not_an_emulator_error(api: Api, method, path, content_type, chunks):
    store = api.new_store()
    target = path.format(store=store.name, dataset=store.dataset)
    status, answer = _raw_send(api, method, target, content_type, chunks)
    assert status == 400 and answer["error"]["status"] == "INVALID_ARGUMENT", answer
    assert "the request body is malformed or incomplete" in answer["error"]["message"]
