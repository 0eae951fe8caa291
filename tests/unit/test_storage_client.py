"""The function's Cloud Storage client (handlers/clients/storage.py)."""

import time

from handlers.clients.storage import POOL_CONNECTIONS, GcsStateStore, storage_client

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
