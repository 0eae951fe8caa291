"""The Healthcare API client: what it retries, what it does not, and how it reads operations."""

import json

import pytest
import requests

from handlers.clients import healthcare
from handlers.clients.healthcare import ApiError, HealthcareApi, Operation
from handlers.retry import Deadline


class Answer:
    def __init__(self, status, body):
        self.status_code = status
        self.content = json.dumps(body).encode()
        self.text = self.content.decode()
        self.reason = "reason"

    def json(self):
        return json.loads(self.content)


class ScriptedSession:
    """Answers requests from a script; an exception in the script is raised instead."""

    def __init__(self, *script):
        self.script = list(script)
        self.calls = []

    def request(self, method, url, json=None, timeout=None):
        self.calls.append((method, url, json))
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def error(code, status):
    return Answer(code, {"error": {"code": code, "status": status, "message": f"{status} happened"}})


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(healthcare.time, "sleep", lambda seconds: None)
    monkeypatch.setattr("handlers.retry.time.sleep", lambda seconds: None)


def test_quota_unavailable_and_connection_errors_are_retried_then_the_answer_returned():
    session = ScriptedSession(error(429, "RESOURCE_EXHAUSTED"), error(503, "UNAVAILABLE"),
                              requests.ConnectionError("reset"), Answer(200, {"name": "projects/p/operations/1"}))
    api = HealthcareApi(session, "http://hc.local")
    operation = api.import_dicom("projects/p/locations/l/datasets/d/dicomStores/s", "gs://b/x/*", Deadline(60),
                                 blob_storage_class="COLDLINE")
    assert operation.name == "projects/p/operations/1"
    method, url, body = session.calls[-1]
    assert (method, url) == ("POST", "http://hc.local/v1/projects/p/locations/l/datasets/d/dicomStores/s:import")
    assert body == {"gcsSource": {"uri": "gs://b/x/*"}, "blobStorageSettings": {"blobStorageClass": "COLDLINE"}}
    assert len(session.calls) == 4


@pytest.mark.parametrize("code, status", [(400, "INVALID_ARGUMENT"), (403, "PERMISSION_DENIED"), (404, "NOT_FOUND")])
def test_other_client_errors_are_not_retried(code, status):
    session = ScriptedSession(error(code, status), Answer(200, {}))
    with pytest.raises(ApiError) as caught:
        HealthcareApi(session, "http://hc.local").get_operation("projects/p/operations/1", Deadline(60))
    assert (caught.value.code, caught.value.status, caught.value.retryable) == (code, status, False)
    assert len(session.calls) == 1


def test_retries_stop_at_the_deadline_with_the_last_error():
    session = ScriptedSession(*[error(503, "UNAVAILABLE")] * 50)
    with pytest.raises(ApiError) as caught:
        HealthcareApi(session, "http://hc.local").get_operation("projects/p/operations/1", Deadline(0.001))
    assert caught.value.code == 503 and len(session.calls) < 50


def test_operation_counters_are_int64_strings_absent_when_zero():
    done = Operation.parse({"name": "n", "done": True, "error": {"code": 3, "message": "1 failed"},
                            "metadata": {"counter": {"success": "12", "failure": "1"}, "logsUrl": "https://x"}})
    assert (done.done, done.success, done.failure, done.pending, done.logs_url) == (True, 12, 1, 0, "https://x")
    running = Operation.parse({"name": "n", "metadata": {}})
    assert (running.done, running.success, running.error) == (False, 0, None)
