"""The function's Cloud Storage client (handlers/clients/storage.py)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from google.api_core import exceptions

from handlers.clients.storage import (
    POOL_CONNECTIONS,
    Conflict,
    GcsSource,
    GcsStateStore,
    SourceCallFailed,
    SourceGone,
    SourceUnreadable,
    create_or_replace,
    storage_client,
)

from tests.fakes import MemoryStateStore
from tests.unit.not_found_server import NotFoundEverywhere, not_found_server


def test_the_client_keeps_a_connection_open_for_each_request_an_instance_serves(monkeypatch):
    """requests keeps 10 by default: with 64 admissions at once, the other 54 opened a connection per call."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    client = storage_client("p")
    for url in ("https://storage.googleapis.com/storage/v1/b", "http://127.0.0.1:9/storage/v1/b"):
        assert client._http.get_adapter(url)._pool_maxsize == POOL_CONNECTIONS
    assert POOL_CONNECTIONS >= 64


def test_reading_absent_objects_costs_one_call_each_and_no_bucket_lookups(monkeypatch):
    """The protocol reads absent objects routinely (an open batch's seal): the client must not add a bucket GET per 404."""
    with not_found_server() as address:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{address}")
        store = GcsStateStore("state-bkt", storage_client("p"))
        for number in range(20):
            assert store.read(f"seals/rule/batch-{number}.json") is None
            time.sleep(0.01)  # room for any background lookup a 404 would start
        time.sleep(0.2)
    paths = [target.split("?")[0] for target, _ in NotFoundEverywhere.seen]
    bucket_lookups = [path for path in paths if path.rstrip("/").endswith("/b/state-bkt")]
    assert not bucket_lookups, f"{len(bucket_lookups)} bucket GETs beside 20 object reads"
    assert len(paths) == 20


def test_a_source_object_that_is_gone_reads_as_none_or_source_gone(monkeypatch):
    """Naming a one-call backfill's failures reads its source objects: a 404 is an answer, not an error."""
    with not_found_server() as address:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{address}")
        store = GcsStateStore("state-bkt", storage_client("p"))
        assert store.live_source("legacy-bkt", "archive/a.dcm") is None
        with pytest.raises(SourceGone, match="gs://legacy-bkt/archive/a.dcm#5"):
            store.read_source_range("legacy-bkt", "archive/a.dcm", "5", 0, 1024)
    [metadata, media] = [target for target, _ in NotFoundEverywhere.seen]
    assert metadata.startswith("/storage/v1/b/legacy-bkt/o/archive%2Fa.dcm")
    assert "generation=5" in media and "alt=media" in media


class RefusesCopies(BaseHTTPRequestHandler):
    """Answers every rewrite (POST) with ``status`` and a Cloud Storage error body naming the object."""

    status, reason = 400, "resourceIsEncryptedWithCustomerEncryptionKey"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        error = {"code": self.status, "message": f"{self.path} refused",
                 "errors": [{"reason": self.reason, "message": f"{self.path} refused", "domain": "global"}]}
        body = json.dumps({"error": error}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def copy_refused_with(monkeypatch, status: int, reason: str) -> None:
    RefusesCopies.status, RefusesCopies.reason = status, reason
    server = ThreadingHTTPServer(("127.0.0.1", 0), RefusesCopies)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        GcsStateStore("state-bkt", storage_client("p")).copy_in("inbox-bkt", "DOE^JOHN/1.dcm", "7", "staging/all/b/0.dcm", {})
    finally:
        server.shutdown()


@pytest.mark.parametrize("status, reason", [(400, "resourceIsEncryptedWithCustomerEncryptionKey"), (403, "forbidden"),
                                            (400, "not a reason: DOE^JOHN/1.dcm")])
def test_a_copy_refused_for_good_says_why_without_the_objects_name(monkeypatch, status, reason):
    with pytest.raises(SourceUnreadable) as refused:
        copy_refused_with(monkeypatch, status, reason)
    shown = reason if " " not in reason else {400: "Bad Request"}[status]
    assert refused.value.reason == f"Cloud Storage refused to copy it: {status} {shown}"


def test_a_missing_generation_is_gone_and_a_refusal_that_may_pass_propagates(monkeypatch):
    with pytest.raises(SourceGone):
        copy_refused_with(monkeypatch, 404, "notFound")
    with pytest.raises(SourceCallFailed) as failed:  # a cancelled call: not the object's fault, the delivery fails
        copy_refused_with(monkeypatch, 499, "cancelled")
    assert failed.value.code == 499 and not failed.value.transient
    assert str(failed.value) == "Cloud Storage copy failed: Cancelled 499: /storage/v1/b/inbox-bkt/o/[object name]/" \
        "rewriteTo/b/state-bkt/o/staging%2Fall%2Fb%2F0.dcm?sourceGeneration=7&prettyPrint=false refused"


class Unreachable:
    """A google-cloud-storage client whose calls fail the way a dead endpoint's do after the client's retries."""

    URL = "/storage/v1/b/inbox-bkt/o/DOE%5EJOHN%201960%2FCT%201.dcm/rewriteTo/b/state-bkt/o/staging%2Fx.dcm"

    def _fail(self, *args, **kwargs):
        raise exceptions.RetryError("Timeout of 120.0s exceeded", requests.ConnectionError(
            f"HTTPSConnectionPool(host='storage.googleapis.com', port=443): Max retries exceeded with url: {self.URL}"))

    get_blob = rewrite = patch = delete = download_as_bytes = _fail

    def bucket(self, *args, **kwargs):
        return self

    blob = bucket

    def list_blobs(self, *args, **kwargs):
        yield from self._fail()

    @property
    def client(self):
        return self


@pytest.mark.parametrize("call", [
    lambda store: store.copy_in("inbox-bkt", "DOE^JOHN 1960/CT 1.dcm", "7", "staging/x.dcm", {}),
    lambda store: store.tag_source("inbox-bkt", "DOE^JOHN 1960/CT 1.dcm", "7", {}),
    lambda store: store.copy_source("inbox-bkt", "DOE^JOHN 1960/CT 1.dcm", "7", "quar-bkt", "f/DOE^JOHN.dcm", {}),
    lambda store: store.delete_source("inbox-bkt", "DOE^JOHN 1960/CT 1.dcm", "7"),
    lambda store: store.live_source("inbox-bkt", "DOE^JOHN 1960/CT 1.dcm"),
    lambda store: store.read_source_range("inbox-bkt", "DOE^JOHN 1960/CT 1.dcm", "7", 0, 132),
    lambda store: list(GcsSource(Unreachable()).list("inbox-bkt", "", start_offset="DOE^JOHN 1960/CT 1.dcm")),
], ids=["copy_in", "tag_source", "copy_source", "delete_source", "live_source", "read_source_range", "list"])
def test_a_call_on_a_source_object_that_fails_says_so_without_any_name(call):
    """The error's own text holds the request URL; whoever logs the error knows no name to take out of it."""
    store = GcsStateStore("state-bkt", Unreachable())
    store._bucket_handle = Unreachable()
    with pytest.raises(SourceCallFailed) as failed:
        call(store)
    assert "DOE" not in str(failed.value)
    assert str(failed.value).endswith("failed: RetryError (last attempt: ConnectionError)")
    assert failed.value.transient and failed.value.code is None


@pytest.mark.parametrize("generation", ["²", "١٢", "", "12a"])
def test_a_generation_that_is_no_number_is_never_sent(generation):
    with pytest.raises(SourceUnreadable, match="generation is not a number"):
        GcsStateStore("state-bkt", object()).copy_in("inbox-bkt", "a.dcm", generation, "staging/all/b/0.dcm", {})


def test_create_or_replace_writes_over_what_was_read_and_refuses_a_change_since():
    store = MemoryStateStore()
    create_or_replace(store, "x.json", {"n": 1}, store.read("x.json"))
    first = store.read("x.json")
    with pytest.raises(Conflict):
        create_or_replace(store, "x.json", {"n": 9}, None)  # created by another writer since the read
    create_or_replace(store, "x.json", {"n": 2}, first)
    with pytest.raises(Conflict):
        create_or_replace(store, "x.json", {"n": 9}, first)  # rewritten since the read
    assert store.doc("x.json") == {"n": 2}
