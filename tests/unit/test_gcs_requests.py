"""The Cloud Storage proxy's reading of requests: method ids, and the object a mutation writes."""

import json

import pytest

from localstack.gcsrequests import classify, multipart_metadata_name


@pytest.mark.parametrize("verb, path, method, target", [
    ("GET", "/storage/v1/b", "buckets.list", None),
    ("GET", "/storage/v1/b/state", "buckets.get", None),
    ("GET", "/storage/v1/b/state/o?prefix=leases%2F", "objects.list", None),
    ("GET", "/storage/v1/b/state/o/leases%2Fall.json?alt=media", "objects.get", None),
    ("GET", "/download/storage/v1/b/state/o/a%2Fb.dcm?alt=media", "objects.get", None),
    ("DELETE", "/storage/v1/b/state/o/members%2Fall%2Fb1%2Fabc", "objects.delete", ("state", "members/all/b1/abc")),
    ("PATCH", "/storage/v1/b/state/o/x.json", "objects.patch", ("state", "x.json")),
    ("POST", "/storage/v1/b/inbox/o/site%2Fa.dcm/rewriteTo/b/state/o/staging%2Fall%2Fb%2Fid.dcm?sourceGeneration=7",
     "objects.rewrite", ("state", "staging/all/b/id.dcm")),
    ("POST", "/storage/v1/b/inbox/o/a.dcm/copyTo/b/state/o/c.dcm", "objects.copy", ("state", "c.dcm")),
    ("POST", "/storage/v1/b/state/o/whole.dcm/compose", "objects.compose", ("state", "whole.dcm")),
    ("POST", "/upload/storage/v1/b/state/o?uploadType=media&name=leases%2Fall.json", "objects.insert",
     ("state", "leases/all.json")),
    ("POST", "/batch/storage/v1", "batch", None),
    ("OPTIONS", "/storage/v1/b", "other", None),
])
def test_method_ids_and_targets(verb, path, method, target):
    found = classify(verb, path, "", b"")
    assert (found.method, found.target) == (method, target)


def multipart(name: str, data: bytes, boundary: str = "===============7330845974216740156==") -> tuple[str, bytes]:
    metadata = json.dumps({"name": name, "metadata": {"source-name": "x--y"}}).encode()
    body = (f"--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n".encode() + metadata
            + f"\r\n--{boundary}\r\ncontent-type: application/octet-stream\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--".encode())
    return f'multipart/related; boundary="{boundary}"', body


def test_a_multipart_upload_names_its_object_in_the_metadata_part():
    content_type, body = multipart("claims/all/0123.json", b"--not a boundary--" * 1000)
    found = classify("POST", "/upload/storage/v1/b/state/o?uploadType=multipart&ifGenerationMatch=0", content_type, body)
    assert (found.method, found.target) == ("objects.insert", ("state", "claims/all/0123.json"))
    assert multipart_metadata_name("multipart/related", body) is None, "no boundary: no name"


def test_a_resumable_session_names_its_object_once_and_its_chunks_name_the_session():
    start = classify("POST", "/upload/storage/v1/b/inbox/o?uploadType=resumable", "application/json",
                     json.dumps({"name": "big/file.dcm"}).encode())
    assert start.target == ("inbox", "big/file.dcm")
    chunk = classify("PUT", "/upload/storage/v1/b/inbox/o?uploadType=resumable&upload_id=abc123", "", b"x" * 10)
    assert (chunk.method, chunk.target, chunk.upload_id) == ("objects.insert", None, "abc123")
