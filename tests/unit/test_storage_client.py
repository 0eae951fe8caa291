"""The function's Cloud Storage client (handlers/clients/storage.py)."""

from handlers.clients.storage import POOL_CONNECTIONS, storage_client


def test_the_client_keeps_a_connection_open_for_each_request_an_instance_serves(monkeypatch):
    """requests keeps 10 by default: with 64 admissions at once, the other 54 opened a connection per call."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    client = storage_client("p")
    for url in ("https://storage.googleapis.com/storage/v1/b", "http://127.0.0.1:9/storage/v1/b"):
        assert client._http.get_adapter(url)._pool_maxsize == POOL_CONNECTIONS
    assert POOL_CONNECTIONS >= 64
