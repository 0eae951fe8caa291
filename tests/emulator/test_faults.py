"""Fault injection: error rates, latency, slow and failing operations, per method and for all."""

import json
import os
import subprocess
import sys
import time

import pytest

from localstack.samples import make_series
from localstack.services import start_healthcare_emulator
from tests.emulator.client import Api, assert_google_error, counter


def test_faults_are_off_by_default(api):
    assert api.admin("GET", "faults").json() == {"seed": None, "methods": {}}


def test_rate429_answers_resource_exhausted_and_is_counted(api, store, upload, faults):
    uri = upload("f/a.dcm", make_series(1)[0][1])
    faults({"methods": {"dicomStores.import": {"rate429": 1.0}}})
    before = api.admin("GET", "stats", params={"view": "full"}).json()
    response = api.call("POST", f"{store.name}:import", json={"gcsSource": {"uri": uri}})
    assert_google_error(response, 429, "RESOURCE_EXHAUSTED", "injected by the emulator")
    after = api.admin("GET", "stats", params={"view": "full"}).json()
    assert after["requests"]["dicomStores.import"] == before["requests"].get("dicomStores.import", 0) + 1
    injected = lambda s: s["injectedErrors"].get("dicomStores.import", {}).get("429", 0)  # noqa: E731
    assert injected(after) == injected(before) + 1
    assert api.ok("GET", store.name)  # other methods unaffected
    operations = api.ok("GET", f"{store.dataset}/operations")["operations"]
    assert [op["metadata"]["apiMethodName"].rsplit(".", 1)[1] for op in operations] == ["CreateDataset"]  # no import


def test_rate503_on_operations_get(api, store, upload, faults):
    operation = api.start_import(store, upload("f/a.dcm", make_series(1)[0][1]))
    faults({"methods": {"operations.get": {"rate503": 1.0}}})
    assert_google_error(api.call("GET", operation["name"]), 503, "UNAVAILABLE", "rate503")
    api.admin("DELETE", "faults")
    assert counter(api.wait(operation)) == {"success": "1"}


def test_seeded_rates_repeat_and_roughly_follow_the_rate(api, store, faults):
    def outcomes() -> list[int]:
        faults({"seed": 7, "methods": {"dicomStores.get": {"rate429": 0.3, "rate503": 0.2}}})
        return [api.call("GET", store.name).status_code for _ in range(60)]

    first, second = outcomes(), outcomes()
    assert first == second
    assert set(first) == {200, 429, 503}
    assert 5 <= first.count(429) <= 35 and 2 <= first.count(503) <= 25


def test_star_applies_to_all_methods_and_a_method_entry_overrides_it(api, store, faults):
    faults({"methods": {"*": {"rate503": 1.0}, "dicomStores.get": {"rate503": 0.0}}})
    assert_google_error(api.call("GET", store.dataset), 503, "UNAVAILABLE")
    assert api.call("GET", store.name).status_code == 200
    assert api.admin("GET", "health").status_code == 200  # admin endpoints are never faulted


def test_latency_is_added(api, store, faults):
    faults({"methods": {"dicomStores.get": {"latencySeconds": 1.5}}})
    started = time.monotonic()
    assert api.call("GET", store.name).status_code == 200
    assert time.monotonic() - started >= 1.5
    started = time.monotonic()
    api.call("GET", store.dataset)
    assert time.monotonic() - started < 1.5  # another method: no added latency (a loaded machine has a second)


def test_fail_operation_ends_with_the_configured_error_and_imports_nothing(api, store, upload, faults):
    uri = upload("f/a.dcm", make_series(1)[0][1])
    faults({"methods": {"dicomStores.import": {"failOperation": {"code": 14, "message": "backend went away"}}}})
    done = api.import_and_wait(store, uri)
    assert done["error"] == {"code": 14, "message": "backend went away"}
    assert api.sop_uids(store) == set()
    faults({"methods": {"*": {"failOperation": True}, "dicomStores.export": {"failOperation": False}}})
    assert api.import_and_wait(store, uri)["error"]["code"] == 13
    exported = api.wait(api.start_export(store, {"gcsDestination": {"uriPrefix": f"gs://{uri.split('/')[2]}/out"}}))
    assert "response" in exported  # a method's own entry overrides "*"


def test_min_operation_seconds_delays_done(api, store, upload, faults):
    uri = upload("f/a.dcm", make_series(1)[0][1])
    faults({"methods": {"dicomStores.import": {"minOperationSeconds": 0.5}}})
    started = time.monotonic()
    operation = api.start_import(store, uri)
    assert "done" not in api.ok("GET", operation["name"])
    assert counter(api.wait(operation)) == {"success": "1"}
    assert time.monotonic() - started >= 0.5


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"methods": {"dicomStores.import": {"rate429": 1.5}}}, "rate429 must be between 0 and 1"),
        ({"methods": {"dicomStores.import": {"rate429": 0.6, "rate503": 0.6}}}, "must not exceed 1"),
        ({"methods": {"dicomStores.import": {"latency": 1}}}, "unknown field"),
        ({"methods": {"*": {"failOperation": {"code": 99}}}}, "canonical error code"),
        ({"seed": "x"}, "seed must be an integer"),
        # JSON parsers read NaN; it would pass a range check (comparisons with NaN are False)
        ({"methods": {"*": {"latencySeconds": float("nan")}}}, "latencySeconds must be between 0 and 600.0, got nan"),
        ({"methods": {"*": {"rate429": float("nan")}}}, "rate429 must be between 0 and 1.0, got nan"),
        ({"methods": {"*": {"logDelaySeconds": float("inf")}}}, "logDelaySeconds must be between 0 and 600.0"),
        ({"method": {}}, "unknown field"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_invalid_fault_json_is_refused_naming_the_field(api, spec, fragment, faults):
    before = api.admin("GET", "faults").json()
    body = json.dumps(spec)  # as Python writes it: NaN and Infinity included, which requests' json= refuses
    put = api.admin("PUT", "faults", data=body, headers={"Content-Type": "application/json"})
    assert_google_error(put, 400, "INVALID_ARGUMENT", fragment)
    assert api.admin("GET", "faults").json() == before


def test_put_get_delete_faults(api, faults):
    spec = {"seed": 3, "methods": {"dicomStores.export": {"latencySeconds": 0.01, "failOperation": True}}}
    faults(spec)
    assert api.admin("GET", "faults").json() == {
        "seed": 3,
        "methods": {"dicomStores.export": {
            "latencySeconds": 0.01,
            "failOperation": {"code": 13, "message": "operation failure injected by the emulator (faults: failOperation)"},
        }},
    }
    assert api.admin("DELETE", "faults").json() == {"seed": None, "methods": {}}


def test_faults_from_the_environment_at_start_and_reset(tmp_path, fake_gcs):
    spec = {"methods": {"datasets.list": {"rate503": 1.0}}}
    service = start_healthcare_emulator(
        tmp_path, storage_host=fake_gcs.url, faults={"HEALTHCARE_EMULATOR_FAULTS": json.dumps(spec)}
    )
    try:
        own = Api(service.url)
        assert own.admin("GET", "faults").json() == {"seed": None, "methods": {"datasets.list": {"rate503": 1.0}}}
        assert own.call("GET", "projects/p/locations/l/datasets").status_code == 503
        own.new_store(location="l")
        assert own.stats()["datasets.create"] == 1
        own.admin("PUT", "faults", json={"methods": {}})
        own.admin("PUT", "config", json={"partialFailure": "response"})

        # reset: data, operations, logs and stats go; faults and settings stay...
        assert own.admin("POST", "reset").json() == {}
        assert own.stats() == {}
        assert own.ok("GET", "projects/p/locations/l/datasets") == {}
        assert own.admin("GET", "faults").json()["methods"] == {}
        assert own.admin("GET", "config").json()["partialFailure"] == "response"
        # ...unless all=true: then back to the startup values.
        own.admin("POST", "reset", params={"all": "true"})
        assert own.admin("GET", "faults").json()["methods"] == spec["methods"]
        assert own.admin("GET", "config").json() == {"partialFailure": "error", "partialFailureCode": 3,
                                                    "logOperationId": "name"}
    finally:
        service.stop()


def test_invalid_fault_environment_stops_the_start_with_a_message():
    env = {**os.environ, "HEALTHCARE_EMULATOR_FAULTS": '{"methods": {"*": {"rate429": 2}}}'}
    result = subprocess.run(
        [sys.executable, "-m", "emulator", "--port", "0"], env=env, capture_output=True, text=True, timeout=30,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert result.returncode == 2
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["severity"] == "ERROR" and "rate429" in line["message"]

