"""The HTTP outcome policy of the entry points, through functions-framework's own app."""

import base64
import json
from pathlib import Path

import pytest
from functions_framework import create_app

from handlers import runtime
from handlers.retry import RetryLater
from tests.unit.config_env import CONFIG_ENV as ENV

MAIN = str(Path(__file__).resolve().parents[2] / "main.py")


@pytest.fixture
def client(monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DICOM_IMPORT_CONFIG", raising=False)
    runtime.reset()
    yield create_app("on_object_finalized", MAIN).test_client()
    runtime.reset()


def post_storage_event(client, resource, type_="google.cloud.storage.object.v1.finalized"):
    headers = {"ce-specversion": "1.0", "ce-type": type_, "ce-id": "evt-1",
               "ce-source": "//storage.googleapis.com/projects/_/buckets/inbox-bkt", "ce-subject": "objects/x",
               "ce-time": "2026-11-25T10:00:00Z", "Content-Type": "application/json"}
    return client.post("/", headers=headers, data=json.dumps(resource))


def log_lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_wrong_event_type_is_acknowledged_with_a_reason(client, capsys):
    response = post_storage_event(client, {"bucket": "inbox-bkt", "name": "a.dcm", "generation": "1"},
                                  "google.cloud.storage.object.v1.deleted")
    assert response.status_code == 200
    [line] = log_lines(capsys)
    assert line["severity"] == "WARNING" and "not an object finalize event" in line["reason"]


def test_unwatched_bucket_and_unmatched_names_are_acknowledged(client, capsys):
    assert post_storage_event(client, {"bucket": "other-bkt", "name": "a.dcm", "generation": "1"}).status_code == 200
    assert post_storage_event(client, {"bucket": "inbox-bkt", "name": "notes.txt", "generation": "1"}).status_code == 200
    assert post_storage_event(client, {"bucket": "inbox-bkt", "name": "dir/", "generation": "1"}).status_code == 200
    reasons = [line["reason"] for line in log_lines(capsys)]
    assert "not watched" in reasons[0] and reasons[1] == "no rule matches" and "folder placeholder" in reasons[2]


def test_work_that_can_succeed_later_answers_503_without_a_stack_trace(client, capsys, monkeypatch):
    class Busy:
        def admit(self, *args):
            raise RetryLater("batch is being sealed")

    instance = runtime.get()
    monkeypatch.setattr(type(instance), "intake", property(lambda self: Busy()), raising=False)
    response = post_storage_event(client, {"bucket": "inbox-bkt", "name": "a.dcm", "generation": "1"})
    assert response.status_code == 503
    assert b"Traceback" not in response.data
    [line] = log_lines(capsys)
    assert line["severity"] == "WARNING" and line["reason"] == "batch is being sealed"


def test_invalid_config_is_retried_and_logged_with_every_problem(client, capsys, monkeypatch, tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text(Path(MAIN).with_name("config.yaml").read_text().replace("max_objects: 500", "max_objects: -1"))
    monkeypatch.setenv("DICOM_IMPORT_CONFIG", str(bad))
    response = post_storage_event(client, {"bucket": "inbox-bkt", "name": "a.dcm", "generation": "1"})
    assert response.status_code == 503
    [line] = log_lines(capsys)
    assert line["severity"] == "ERROR"
    assert any("max_objects must be between 1 and 100000" in p for p in line["problems"])


def test_unexpected_errors_are_logged_once_and_retried(client, capsys, monkeypatch):
    class Broken:
        def admit(self, *args):
            raise KeyError("batch")

    instance = runtime.get()
    monkeypatch.setattr(type(instance), "intake", property(lambda self: Broken()), raising=False)
    response = post_storage_event(client, {"bucket": "inbox-bkt", "name": "a.dcm", "generation": "1"})
    assert response.status_code == 503 and b"Traceback" not in response.data
    [line] = log_lines(capsys)
    assert line["severity"] == "ERROR" and line["error"] == "KeyError: 'batch'" and "Traceback" in line["stack_trace"]


@pytest.mark.parametrize("status", [403, 503])
def test_a_google_error_is_logged_without_its_url_or_the_events_object_name(client, capsys, monkeypatch, status):
    from google.api_core.exceptions import from_http_status

    name = "DOE^JOHN 1960/img 1.dcm"
    url = ("POST https://storage.googleapis.com/storage/v1/b/inbox-bkt/o/DOE%5EJOHN%201960%2Fimg%201.dcm"
           "/rewriteTo/b/state/o/staging%2Fx.dcm")
    message = f"{url}: Access denied to {name}"

    class Refused:
        def admit(self, *args):
            raise from_http_status(status, message)

    instance = runtime.get()
    monkeypatch.setattr(type(instance), "intake", property(lambda self: Refused()), raising=False)
    response = post_storage_event(client, {"bucket": "inbox-bkt", "name": name, "generation": "1"})
    assert response.status_code == 503
    [line] = log_lines(capsys)
    text = json.dumps(line)
    assert "DOE" not in text and "https://" not in text, text
    assert f"{status}: Access denied to [object name]" in line["error"]


def _unavailable_errors():
    import google.api_core.exceptions as google_errors
    import requests

    return [requests.ConnectionError("Connection reset by peer"), google_errors.ServiceUnavailable("backend down"),
            google_errors.TooManyRequests("slow down"), TimeoutError("publish timed out")]


@pytest.mark.parametrize("error", _unavailable_errors(), ids=lambda e: e.__class__.__name__)
def test_unavailable_google_services_are_retried_with_a_warning(client, capsys, monkeypatch, error):
    class Unreachable:
        def admit(self, *args):
            raise error

    instance = runtime.get()
    monkeypatch.setattr(type(instance), "intake", property(lambda self: Unreachable()), raising=False)
    response = post_storage_event(client, {"bucket": "inbox-bkt", "name": "a.dcm", "generation": "1"})
    assert response.status_code == 503
    [line] = log_lines(capsys)
    assert line["severity"] == "WARNING" and "stack_trace" not in line


@pytest.mark.parametrize("body", [b"[1, 2]", b'"event"', b'{"name": "\xff"}', b"[" * 100_000],
                         ids=["list", "string", "invalid-utf8", "deeply-nested"])
def test_bodies_the_framework_cannot_read_are_a_400_with_a_log_line_not_a_500(client, capsys, body):
    response = client.post("/", headers={"Content-Type": "application/json"}, data=body)
    assert response.status_code == 400 and b"Traceback" not in response.data
    [line] = log_lines(capsys)
    assert line["severity"] == "WARNING" and "not a CloudEvent" in line["message"] and line["error"]


def test_http_errors_pass_the_error_handler_unchanged(client):
    assert client.post("/", headers={"Content-Type": "text/plain"}, data=b"hi").status_code == 415
    assert client.post("/", headers={"Content-Type": "application/json"}, data=b"{}").status_code == 400


def post_followup(monkeypatch, budget):
    """A follow-up delivery for batch b-1 with FOLLOWUP_BUDGET_SECONDS=budget: (response, the driver's budget)."""
    monkeypatch.setenv("FOLLOWUP_BUDGET_SECONDS", budget)
    driven = []

    class Driver:
        def drive(self, rule, batch, deadline):
            driven.append(deadline.seconds)

    instance = runtime.get()
    monkeypatch.setattr(type(instance), "driver", property(lambda self: Driver()), raising=False)
    data = base64.b64encode(json.dumps({"kind": "import-batch", "rule": "ct", "batch": "b-1"}).encode()).decode()
    headers = {"ce-specversion": "1.0", "ce-type": "google.cloud.pubsub.topic.v1.messagePublished", "ce-id": "m-1",
               "ce-source": "//pubsub.googleapis.com/projects/p/topics/followups", "Content-Type": "application/json"}
    app = create_app("on_followup", MAIN).test_client()
    response = app.post("/", headers=headers, data=json.dumps({"message": {"data": data, "messageId": "m-1"}}))
    return response, driven


@pytest.mark.parametrize("budget", ["4m", "-5", "nan"])
def test_an_unusable_followup_budget_falls_back_to_the_default_with_a_warning(client, capsys, monkeypatch, budget):
    response, driven = post_followup(monkeypatch, budget)
    assert response.status_code == 200 and driven == [240.0]
    [line] = [line for line in log_lines(capsys) if line["severity"] == "WARNING"]
    assert line["variable"] == "FOLLOWUP_BUDGET_SECONDS" and line["value"] == budget
    assert "FOLLOWUP_BUDGET_SECONDS" in line["message"] and "plain number of seconds" in line["fix"]


def test_a_followup_budget_in_seconds_is_used(client, capsys, monkeypatch):
    response, driven = post_followup(monkeypatch, "400")
    assert response.status_code == 200 and driven == [400.0]
    assert not [line for line in log_lines(capsys) if line["severity"] == "WARNING"]


def test_unusable_failure_budgets_fall_back_to_their_defaults_with_a_warning(client, capsys, monkeypatch):
    monkeypatch.setenv("FAILURE_LOGS_WAIT_SECONDS", "-1")
    monkeypatch.setenv("FAILURE_VERIFY_SECONDS", "2m")
    driver = runtime.get().driver
    assert (driver.failure_logs_wait_seconds, driver.failure_verify_seconds) == (60.0, 120.0)
    warned = [line["variable"] for line in log_lines(capsys) if line["severity"] == "WARNING"]
    assert warned == ["FAILURE_LOGS_WAIT_SECONDS", "FAILURE_VERIFY_SECONDS"]
