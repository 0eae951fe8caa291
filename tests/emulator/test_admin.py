"""Admin endpoints, settings, and what a client sees when the emulator itself breaks."""

import io
import json
import time

from emulator.app import create_app
from emulator.context import Emulator
from emulator.logs import LogBook
from localstack.samples import bundled_bytes, make_series
from tests.emulator.client import assert_google_error, counter


def test_health(api):
    body = api.admin("GET", "health").json()
    assert body["status"] == "ok" and body["storageEmulatorHost"].startswith("http://127.0.0.1:")


def test_stats_count_requests_per_method_id(api, store, upload):
    uri = upload("s/a.dcm", make_series(1)[0][1])
    before = api.stats()
    operation = api.start_import(store, uri)
    api.start_import(store, uri)
    api.wait(operation)
    after = api.stats()
    assert after["dicomStores.import"] == before.get("dicomStores.import", 0) + 2
    assert after["operations.get"] > before.get("operations.get", 0)
    assert all(not key.startswith("emulator") for key in after)  # admin calls are not counted


def test_logs_are_json_entries_for_operations(api, store, bucket, upload):
    uri = upload("l/bad.dcm", b"garbage")
    done = api.import_and_wait(store, uri)
    entries = api.logs(done)
    assert [e["message"] for e in entries][0] == "import started"
    failure = next(e for e in entries if e["severity"] == "ERROR" and e.get("object"))
    assert failure["object"] == uri and failure["operation"] == done["name"].rsplit("/", 1)[1]
    assert failure["time"].endswith("Z")
    everything = api.admin("GET", "logs").json()["entries"]
    assert any(e.get("object") == uri for e in everything)


def test_config_is_validated(api, settings):
    assert_google_error(api.admin("PUT", "config", json={"partialFailure": "maybe"}), 400, "INVALID_ARGUMENT", "partialFailure")
    assert_google_error(api.admin("PUT", "config", json={"partialFailureCode": 0}), 400, "INVALID_ARGUMENT", "canonical")
    assert_google_error(api.admin("PUT", "config", json={"style": "x"}), 400, "INVALID_ARGUMENT", "unknown setting")
    settings({"partialFailureCode": 13})
    assert api.admin("GET", "config").json() == {"partialFailure": "error", "partialFailureCode": 13,
                                                "logOperationId": "name"}


class _BrokenGcs:
    def bucket_exists(self, bucket: str) -> bool:
        raise RuntimeError("disk on fire")

    def close(self) -> None:
        pass


def test_unexpected_errors_give_a_google_500_without_traceback():
    stream = io.StringIO()
    emulator = Emulator(log=LogBook(stream), gcs_factory=_BrokenGcs)
    client = create_app(emulator).test_client()

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    emulator.registry.datasets = boom  # type: ignore[method-assign]
    response = client.get("/v1/projects/p/locations/l/datasets")
    assert response.status_code == 500
    error = response.get_json()["error"]
    assert error["status"] == "INTERNAL" and "RuntimeError" in error["message"]
    assert "secret internals" not in response.get_data(as_text=True) and "Traceback" not in error["message"]
    logged = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert any(e["severity"] == "ERROR" and "Traceback" in e.get("traceback", "") for e in logged)

    # The same inside an operation: the operation fails with INTERNAL, the log has the traceback.
    client.post("/v1/projects/p/locations/l/datasets?datasetId=d")
    client.post("/v1/projects/p/locations/l/datasets/d/dicomStores?dicomStoreId=s")
    started = client.post("/v1/projects/p/locations/l/datasets/d/dicomStores/s:import",
                          json={"gcsSource": {"uri": "gs://bucket-x/*.dcm"}}).get_json()
    deadline = time.monotonic() + 5
    while not (done := client.get(f"/v1/{started['name']}").get_json()).get("done"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert done["error"]["code"] == 13 and "disk on fire" not in done["error"]["message"]
    assert counter(done) == {}
    assert "disk on fire" in stream.getvalue()


def test_stderr_is_json_lines_only(api, healthcare_emulator, store, upload):
    # badVR.dcm has an IS value "1A": pydicom warns, the instance is kept (that attribute is not searchable).
    done = api.import_and_wait(store, upload("j/bad-vr.dcm", bundled_bytes("badVR.dcm")))
    assert counter(done) == {"success": "1"}
    # localstack's process manager heads the file with "=== <time> starting ..." lines.
    lines = [line for line in healthcare_emulator.log_path.read_text().splitlines() if not line.startswith("=== ")]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert {"time", "severity", "message"} <= set(entry), line
    entries = [json.loads(line) for line in lines]
    assert any(e.get("methodId") == "dicomStores.import" for e in entries)
    assert any(e["severity"] == "WARNING" and "1A" in e["message"] for e in entries)
