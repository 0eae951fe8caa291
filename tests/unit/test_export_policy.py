"""Where exports may go (exports.destinations) and which stores they may read: config, checks, refusals.

Every refusal is tested at each place it can happen: the config (FILE:LINE), the request
checks, the export job (before any call or write), the Pub/Sub entry point (a REJECTED
result naming the rule, valid against the schema) and the CLI (one line, exit 1).
"""

import base64
import json
from types import SimpleNamespace

import pytest
from cloudevents.http import CloudEvent
from werkzeug.exceptions import ServiceUnavailable

from handlers import entrypoints, runtime
from handlers.batch.reporting import Reporter
from handlers.clients.healthcare import ApiError
from handlers.config import SOURCE_DIR, ConfigError, parse
from handlers.exports.job import STARTING, ExportJob, conflict_path
from handlers.exports.request import (
    DESTINATIONS_RULE,
    STORES_RULE,
    ExportRequest,
    ExportRequestError,
    RefusedMessage,
    check_destination,
    request_from_message,
    resolve_store,
)
from handlers.retry import Deadline, RetryLater
from tests.fakes import FakeApi, FakeClock, FakePublisher, MemoryStateStore
from tests.message_schemas import validate
from tests.unit.config_env import CONFIG_ENV

STORE = "projects/p/locations/l/datasets/d/dicomStores/s"
OTHER_STORE = "projects/attacker/locations/l/datasets/d/dicomStores/s"

BASE = """\
stores:
  main: ${DICOM_STORE}
rules:
  - name: all
    match: gs://${INBOX_BUCKET}/**.dcm
    store: main
state:
  bucket: ${STATE_BUCKET}
results:
  topic: ${RESULTS_TOPIC}
followup:
  topic: ${FOLLOWUP_TOPIC}
"""


def load(exports: str = "", **env: str):
    return parse(BASE + exports, "c.yaml", {**CONFIG_ENV, **env})


def problems(exports: str, **env: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(exports, **env)
    return info.value.problems


# -- config -------------------------------------------------------------------------------------------

def test_the_default_is_the_export_bucket_deploy_sh_sets_and_nothing_else():
    config = load(EXPORT_BUCKET="exports-bkt")
    assert config.exports.destinations == ("gs://exports-bkt/",) and config.exports.default
    assert load().exports.destinations == (), "without --export-bucket every export is refused"


def test_listed_destinations_replace_the_default_and_are_interpolated():
    config = load("exports:\n  destinations:\n    - gs://${EXPORT_BUCKET}/research/\n    - gs://cohorts\n",
                  EXPORT_BUCKET="exports-bkt")
    assert config.exports.destinations == ("gs://exports-bkt/research/", "gs://cohorts/")
    assert not config.exports.default
    assert load("exports:\n  destinations: []\n", EXPORT_BUCKET="exports-bkt").exports.destinations == ()


@pytest.mark.parametrize("item, message", [
    ("gs://cohorts/research", "c.yaml:15: export destination 'gs://cohorts/research' must end with '/': "
                              "gs://cohorts/research/ (without it, gs://cohorts/research-other/ would be allowed too)"),
    ("cohorts/research/", "c.yaml:15: export destination: 'cohorts/research/' is not a Cloud Storage URI"),
    ("gs://cohorts/*/", "c.yaml:15: export destination 'gs://cohorts/*/' has a wildcard"),
    ("gs://Bad_Bucket/", "c.yaml:15: export destination: bucket 'Bad_Bucket'"),
    ("gs://cohorts/a/../b/", "c.yaml:15: export destination 'gs://cohorts/a/../b/' has an empty, '.' or '..' folder"),
    ("gs://${STATE_BUCKET}/exports/", "c.yaml:15: export destination 'gs://state-bkt/exports/' is in the state bucket"),
    ("gs://${INBOX_BUCKET}/out/", "c.yaml:15: export destination 'gs://inbox-bkt/out/' is in bucket 'inbox-bkt', "
                                  "watched by rule 'all': exports would be imported again"),
    ("gs://${NOPE}/", "c.yaml:15: export destination uses ${NOPE} but the environment does not set it"),
    ("42", "c.yaml:15: export destination must be a gs://BUCKET/PREFIX/ string, got 42"),
])
def test_each_bad_destination_is_reported_with_its_line_and_fix(item, message):
    found = problems(f"exports:\n  destinations:\n    - {item}\n")
    assert len(found) == 1 and found[0].startswith(message), found


def test_a_list_is_required_and_duplicates_are_reported():
    assert problems("exports:\n  destinations: gs://cohorts/\n") == [
        "c.yaml:14: exports.destinations must be a list of gs://BUCKET/PREFIX/ folders, e.g. - gs://${EXPORT_BUCKET}/ "
        "(an empty list refuses every export)"]
    assert problems("exports:\n  destinations:\n    - gs://cohorts/\n    - gs://cohorts\n") == [
        "c.yaml:16: export destination gs://cohorts/ is listed twice: remove one"]
    assert problems("exports:\n  destination: []\n")[0].startswith(
        "c.yaml:14: unknown key 'destination' in exports: did you mean 'destinations'?")


def test_the_query_cap_is_read_and_bounded():
    assert load().exports.max_query_results == 10_000
    assert load("exports:\n  max_query_results: 250\n").exports.max_query_results == 250
    assert problems("exports:\n  max_query_results: 2000000\n") == [
        "c.yaml:14: max_query_results must be between 1 and 1000000, got 2000000"]
    assert problems("exports:\n  max_query_results: many\n") == ["c.yaml:14: max_query_results must be a number, got 'many'"]


def test_a_default_export_bucket_that_is_watched_is_a_config_problem():
    assert problems("", EXPORT_BUCKET="inbox-bkt")[0].startswith(
        "c.yaml:1: the default export destination (${EXPORT_BUCKET}) 'gs://inbox-bkt/' is in bucket 'inbox-bkt'")


# -- the checks -------------------------------------------------------------------------------------------

ALLOWED = ("gs://exports-bkt/", "gs://cohorts/research/")


@pytest.mark.parametrize("destination, folder", [
    ("gs://exports-bkt", "gs://exports-bkt/"),
    ("gs://exports-bkt/anything/below", "gs://exports-bkt/"),
    ("gs://cohorts/research", "gs://cohorts/research/"),
    ("gs://cohorts/research/2026/ct/", "gs://cohorts/research/"),
])
def test_destinations_inside_an_allowed_folder_pass(destination, folder):
    assert check_destination(destination, ALLOWED) == folder


@pytest.mark.parametrize("destination, reason", [
    ("gs://attacker-bkt/loot", "outside exports.destinations (gs://exports-bkt/, gs://cohorts/research/)"),
    ("gs://cohorts/research-other/x", "outside exports.destinations"),
    ("gs://cohorts/", "outside exports.destinations"),
    ("gs://exports-bkt-2/x", "outside exports.destinations"),
    ("gs://cohorts/research/../private", "has an empty, '.' or '..' folder"),
    ("gs://cohorts/research//x", "has an empty, '.' or '..' folder"),
])
def test_destinations_elsewhere_are_refused_naming_the_rule(destination, reason):
    with pytest.raises(ExportRequestError, match=reason.replace("(", r"\(").replace(")", r"\)")) as info:
        check_destination(destination, ALLOWED, "c.yaml")
    assert info.value.rule == DESTINATIONS_RULE


def test_with_no_destination_every_export_is_refused_and_the_fix_is_named():
    with pytest.raises(ExportRequestError) as info:
        check_destination("gs://exports-bkt/x", (), "c.yaml")
    assert str(info.value) == ("destination gs://exports-bkt/x is outside exports.destinations (none: every export is "
                               "refused): export into one of those folders, or add the folder to exports.destinations "
                               "in c.yaml and redeploy")


def test_only_configured_stores_may_be_named():
    stores = {"main": STORE}
    assert resolve_store("main", stores) == STORE and resolve_store(STORE, stores) == STORE
    with pytest.raises(ExportRequestError) as info:
        resolve_store(OTHER_STORE, stores)
    assert info.value.rule == STORES_RULE
    assert str(info.value) == (f"store {OTHER_STORE!r} is not one of the stores in config.yaml (known: main ({STORE})): "
                               "name a configured store's alias, or add the store to 'stores' and redeploy")


# -- the export job: refused before any call or write ------------------------------------------------------

class Setup:
    def __init__(self, destinations=("gs://exports-bkt/",)):
        self.clock = FakeClock()
        self.store = MemoryStateStore()
        self.api = FakeApi(stored=None)
        self.publisher = FakePublisher()
        reporter = Reporter(self.store, self.publisher, "projects/p/topics/results", clock=self.clock)
        self.job = ExportJob(self.store, self.api, reporter, clock=self.clock, destinations=destinations,
                             config_path="c.yaml")


def test_the_job_refuses_a_destination_outside_before_searching_writing_or_exporting():
    s = Setup()
    request = ExportRequest.build(store=STORE, destination="gs://attacker-bkt/loot", studies=["1.2"], request_id="r1")
    with pytest.raises(ExportRequestError, match="outside exports.destinations"):
        s.job.run(request, Deadline(60))
    assert s.api.searches == [] and s.api.exports == [] and s.store.blobs == {} and s.store.docs == {}


def test_a_known_request_id_cannot_smuggle_a_new_destination_before_the_call():
    s = Setup()
    allowed = ExportRequest.build(store=STORE, destination="gs://exports-bkt/a", request_id="r1")
    s.store.create("exports/r1.json", {"state": STARTING, "requestId": "r1", "store": STORE,
                                       "destination": allowed.destination, "mimeType": allowed.mime_type,
                                       "filterUri": None, "requestedAt": s.clock(), "operation": None,
                                       "callStartedAt": None})
    smuggled = ExportRequest.build(store=STORE, destination="gs://attacker-bkt/loot", request_id="r1")
    with pytest.raises(ExportRequestError, match="outside exports.destinations"):
        s.job.run(smuggled, Deadline(60))
    assert s.api.exports == []
    with pytest.raises(RetryLater):
        s.job.run(allowed, Deadline(60))
    assert [body["gcsDestination"]["uriPrefix"] for _, body in s.api.exports] == ["gs://exports-bkt/a"]


# -- the Pub/Sub entry point: a REJECTED result naming the rule ---------------------------------------------

def serve(s: Setup, monkeypatch) -> None:
    """The entry points use ``s``'s job and API; the config (config/prod.yaml) knows the store alias ``main``."""
    config = SimpleNamespace(stores={"main": STORE}, path=str(SOURCE_DIR / "config" / "prod.yaml"))
    instance = SimpleNamespace(config=config, exports=s.job, api=s.api)
    monkeypatch.setattr(runtime, "get", lambda: instance)


def running_export(s: Setup) -> ExportRequest:
    """Request r1 (main to gs://exports-bkt/a), its export call made and running."""
    original = ExportRequest.build(store=STORE, destination="gs://exports-bkt/a", request_id="r1")
    with pytest.raises(RetryLater, match="still running"):
        s.job.run(original, Deadline(60))
    return original


def export_event(body: dict) -> CloudEvent:
    data = {"message": {"data": base64.b64encode(json.dumps(body).encode()).decode(), "messageId": "m-7"}}
    return CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//pubsub", "id": "e-1"},
                      data)


@pytest.mark.parametrize("body, rule, fragment", [
    ({"store": "main", "destination": "gs://attacker-bkt/loot", "requestId": "req-1"}, DESTINATIONS_RULE,
     "destination gs://attacker-bkt/loot is outside exports.destinations (gs://exports-bkt/)"),
    ({"store": OTHER_STORE, "destination": "gs://exports-bkt/x", "requestId": "req-1"}, STORES_RULE,
     f"store '{OTHER_STORE}' is not one of the stores in config/prod.yaml"),  # the deployed file, as named here
])
def test_a_refused_pubsub_request_gets_a_rejected_result_naming_the_rule(monkeypatch, body, rule, fragment):
    s = Setup()
    serve(s, monkeypatch)
    entrypoints.export_request(export_event(body))
    assert s.api.searches == [] and s.api.exports == []
    [(topic, message, attributes)] = s.publisher.messages
    validate(message, attributes)
    assert message["outcome"] == "REJECTED" and message["requestId"] == "req-1"
    assert message["error"]["rule"] == rule and message["error"]["code"] == 403
    assert fragment in message["error"]["message"] and rule in message["hint"]
    assert attributes["outcome"] == "REJECTED"


def test_a_malformed_request_names_no_rule(monkeypatch):
    s = Setup()
    serve(s, monkeypatch)
    entrypoints.export_request(export_event({"store": "main", "destination": "gs://exports-bkt/x", "studies": ["x"]}))
    [(_, message, _)] = s.publisher.messages
    validate(message)
    assert message["error"]["code"] == 400 and "rule" not in message["error"]


@pytest.mark.parametrize("refused", [
    {"store": "retired", "destination": "gs://exports-bkt/a", "requestId": "r1"},
], ids=["its store left config.yaml"])
def test_a_refused_request_reusing_a_running_exports_id_gets_that_exports_result_once(monkeypatch, refused):
    """The refused message may be the export's own, redelivered after config changed: it follows the export."""
    s = Setup()
    original = running_export(s)
    serve(s, monkeypatch)
    with pytest.raises(ServiceUnavailable):
        entrypoints.export_request(export_event(refused))
    assert s.publisher.messages == [], "no REJECTED while the export copies data"
    [operation] = s.api.operations
    s.api.finish(operation, success=5)
    entrypoints.export_request(export_event(refused))
    entrypoints.export_request(export_event(refused))
    assert s.job.run(original, Deadline(60))["outcome"] == "SUCCEEDED"
    [(_, message, attributes)] = s.publisher.messages
    validate(message, attributes)
    assert message["outcome"] == "SUCCEEDED" and message["operation"] == operation
    assert message["counter"]["success"] == 5 and len(s.api.exports) == 1


def test_a_request_reusing_an_exports_id_with_other_arguments_gets_its_own_rejected_result_once(monkeypatch):
    s = Setup()
    original = running_export(s)
    serve(s, monkeypatch)
    other = {"store": "main", "destination": "gs://exports-bkt/b", "requestId": "r1"}
    entrypoints.export_request(export_event(other))
    entrypoints.export_request(export_event(other))  # redelivered: no second result
    [(_, message, attributes)] = s.publisher.messages
    validate(message, attributes)
    assert message["outcome"] == "REJECTED" and message["requestId"] == "r1" and message["error"]["code"] == 400
    assert "requestId r1 already names an export with other arguments (different destination)" in (
        message["error"]["message"])
    tag = request_from_message(other, {"main": STORE}, "m").tag  # tells this result from the export's own
    assert message["requestIdConflict"] == attributes["requestIdConflict"] == tag
    assert s.store.read(conflict_path("r1", tag)).data["result"] == message
    assert len(s.api.exports) == 1 and "result" not in s.store.read("exports/r1.json").data
    [operation] = s.api.operations
    s.api.finish(operation, success=5)
    assert s.job.run(original, Deadline(60))["outcome"] == "SUCCEEDED"
    _, (_, export, export_attributes) = s.publisher.messages
    validate(export, export_attributes)
    assert export["requestIdConflict"] is None and "requestIdConflict" not in export_attributes


OTHER_REASONS = pytest.mark.parametrize("other, rule", [
    ({"store": "main", "destination": "gs://attacker-bkt/loot", "requestId": "r1"}, None),  # checked after the id
    ({"store": "retired", "destination": "gs://exports-bkt/b", "requestId": "r1"}, STORES_RULE),
    ({"store": OTHER_STORE, "destination": "gs://exports-bkt/a", "requestId": "r1"}, STORES_RULE),
    ({"store": "main", "destination": "gs://exports-bkt/a", "studies": ["x"], "requestId": "r1"}, None),
    ({"store": "main", "destination": "gs://attacker-bkt/loot", "bogus": 1, "requestId": "r1"}, None),
], ids=["destination outside", "unknown alias, other destination", "other full store name", "malformed UID",
        "unknown field"])


def other_reason_refusal(s: Setup, monkeypatch, other: dict, rule: str | None) -> dict:
    """``other`` (reusing r1, refused) on Pub/Sub: its REJECTED result, recorded as a conflict, not as r1's."""
    serve(s, monkeypatch)
    entrypoints.export_request(export_event(other))
    entrypoints.export_request(export_event(other))  # redelivered: no second result
    [(_, message, attributes)] = s.publisher.messages
    validate(message, attributes)
    tag = RefusedMessage(json.dumps(other).encode(), {"main": STORE}).tag
    assert message["outcome"] == "REJECTED" and message["requestId"] == "r1" and message["operation"] is None
    assert message["requestIdConflict"] == attributes["requestIdConflict"] == tag
    assert message["error"].get("rule") == rule
    assert s.store.read(conflict_path("r1", tag)).data["result"] == message
    return message


@OTHER_REASONS
def test_a_request_refused_for_another_reason_never_ends_an_export_whose_call_must_be_retried(monkeypatch, other,
                                                                                               rule):
    """The export's call met a 503 (its claim released): a refused request reusing its id must not conclude it."""
    s = Setup()
    original = ExportRequest.build(store=STORE, destination="gs://exports-bkt/a", request_id="r1")
    s.api.import_errors.append(ApiError(503, "UNAVAILABLE", "try later"))
    with pytest.raises(RetryLater, match="not accepted yet"):
        s.job.run(original, Deadline(60))
    assert s.store.read("exports/r1.json").data["state"] == STARTING and s.api.exports == []
    other_reason_refusal(s, monkeypatch, other, rule)
    assert s.store.read("exports/r1.json").data["state"] == STARTING
    with pytest.raises(RetryLater, match="still running"):
        s.job.run(original, Deadline(60))
    [operation] = s.api.operations
    s.api.finish(operation, success=5)
    result = s.job.run(original, Deadline(60))
    assert result["outcome"] == "SUCCEEDED" and result["requestIdConflict"] is None and len(s.api.exports) == 1
    assert len(s.publisher.messages) == 2


@OTHER_REASONS
def test_a_request_refused_for_another_reason_never_follows_a_running_export(monkeypatch, other, rule):
    s = Setup()
    original = running_export(s)
    other_reason_refusal(s, monkeypatch, other, rule)  # at once: it does not wait for the export's end
    [operation] = s.api.operations
    s.api.finish(operation, success=5)
    assert s.job.run(original, Deadline(60))["outcome"] == "SUCCEEDED" and len(s.api.exports) == 1
    _, (_, export, _) = s.publisher.messages
    assert export["outcome"] == "SUCCEEDED" and export["requestIdConflict"] is None


def test_an_exports_own_redelivery_after_its_destination_left_the_allow_list_ends_it_if_never_called(monkeypatch):
    """Same arguments (its fingerprint): the message is the export's own, so its refusal is the id's result."""
    s = Setup()
    original = ExportRequest.build(store=STORE, destination="gs://exports-bkt/a", request_id="r1")
    s.api.import_errors.append(ApiError(503, "UNAVAILABLE", "try later"))
    with pytest.raises(RetryLater, match="not accepted yet"):
        s.job.run(original, Deadline(60))
    s.job.destinations = ("gs://exports-bkt/other/",)
    serve(s, monkeypatch)
    entrypoints.export_request(export_event({"store": "main", "destination": "gs://exports-bkt/a", "requestId": "r1"}))
    [(_, message, _)] = s.publisher.messages
    assert message["outcome"] == "REJECTED" and message["requestIdConflict"] is None
    assert message["error"]["rule"] == DESTINATIONS_RULE
    assert s.store.read("exports/r1.json").data["result"] == message and s.api.exports == []


def test_a_refused_request_waits_for_a_call_in_flight_and_rejects_one_never_made(monkeypatch):
    s = Setup()
    s.store.create("exports/r1.json", {"state": STARTING, "requestId": "r1", "store": STORE,
                                       "destination": "gs://exports-bkt/a", "mimeType": "application/dicom",
                                       "filterUri": None, "requestedAt": s.clock(), "operation": None,
                                       "callStartedAt": s.clock(), "callBy": "calling-worker"})
    with pytest.raises(RetryLater, match="another worker is starting export r1"):
        s.job.reject("r1", "main", None, "study UID 'x' is not a DICOM UID", Deadline(60))
    assert s.publisher.messages == []
    s.clock.sleep(121)  # the claimer died before its call: no export runs under this id
    assert s.job.reject("r1", "main", None, "study UID 'x' is not a DICOM UID", Deadline(60))["outcome"] == "REJECTED"
    assert len(s.publisher.messages) == 1


def test_an_id_refused_on_pubsub_keeps_its_result_and_a_corrected_request_is_told_to_use_a_new_id(
        tmp_path, monkeypatch, capsys):
    s = Setup()
    serve(s, monkeypatch)
    entrypoints.export_request(export_event({"store": "main", "destination": "gs://attacker-bkt/x", "requestId": "r9"}))
    [(_, refusal, _)] = s.publisher.messages
    assert refusal["outcome"] == "REJECTED" and refusal["hint"] == (
        "refused by exports.destinations in c.yaml: request an allowed value, or have the operators change "
        "exports.destinations, then send the request again with a new requestId (r9 keeps this result)")
    corrected = {"store": "main", "destination": "gs://exports-bkt/x", "requestId": "r9"}
    with pytest.raises(ExportRequestError, match=r"^requestId r9 was refused before \(destination gs://attacker-bkt/x "
                                                 r"is outside .*\) and keeps that REJECTED result: send the request "
                                                 r"again with a new requestId$"):
        s.job.run(request_from_message(corrected, {"main": STORE}, "m"), Deadline(60))
    entrypoints.export_request(export_event(corrected))
    assert s.api.exports == [] and len(s.publisher.messages) == 1, "nothing exported, the result not published again"

    from handlers.cli import main

    config = cli_config(tmp_path, monkeypatch)
    monkeypatch.setattr(runtime.Runtime, "exports", property(lambda self: s.job))
    capsys.readouterr()
    code = main(["--config", str(config), "export", "--store", "main", "--to", "gs://exports-bkt/x", "--request-id", "r9"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: requestId r9 was refused before (destination gs://attacker-bkt/x is ")
    assert err.endswith("and keeps that REJECTED result: send the request again with a new requestId\n")
    assert s.api.exports == [] and len(s.publisher.messages) == 1


def test_every_refusal_hint_says_to_use_a_new_request_id():
    from handlers.exports.job import rejection_message
    from handlers.exports.query import CAP_RULE

    for rule in (None, CAP_RULE, DESTINATIONS_RULE, STORES_RULE):
        message, _ = rejection_message("r1", STORE, None, "refused", 0.0, rule)
        assert message["hint"].endswith("send the request again with a new requestId (r1 keeps this result)") or (
            message["hint"] == "fix the request and send it again with a new requestId (r1 keeps this result)")


# -- the CLI: one line, exit 1, no call ----------------------------------------------------------------------

def cli_config(tmp_path, monkeypatch):
    """A config file for the CLI, with the deployed environment and no emulator."""
    for key, value in {**CONFIG_ENV, "EXPORT_BUCKET": "exports-bkt"}.items():
        monkeypatch.setenv(key, value)
    for key in ("STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "HEALTHCARE_EMULATOR_HOST"):
        monkeypatch.delenv(key, raising=False)
    config = tmp_path / "c.yaml"
    config.write_text(BASE)
    return config

def test_the_cli_refuses_a_destination_outside_in_one_line(tmp_path, monkeypatch, capsys):
    from handlers.cli import main

    config = cli_config(tmp_path, monkeypatch)
    monkeypatch.setattr(runtime.Runtime, "api", property(lambda self: pytest.fail("the API was called")))
    code = main(["--config", str(config), "export", "--store", "main", "--to", "gs://attacker-bkt/loot"])
    err = capsys.readouterr().err
    assert code == 1 and err == (
        f"error: destination gs://attacker-bkt/loot is outside exports.destinations (gs://exports-bkt/): export into "
        f"one of those folders, or add the folder to exports.destinations in {config} and redeploy\n")
    code = main(["--config", str(config), "export", "--store", OTHER_STORE, "--to", "gs://exports-bkt/x"])
    assert code == 1 and f"is not one of the stores in {config} (known: " in capsys.readouterr().err


def test_the_config_is_named_as_operators_know_it_relative_to_the_functions_folder(tmp_path):
    from handlers.config import SOURCE_DIR, shown_path

    assert shown_path(str(SOURCE_DIR / "config.yaml")) == "config.yaml"
    assert shown_path(str(SOURCE_DIR / "config" / "prod.yaml")) == "config/prod.yaml"
    assert shown_path(str(tmp_path / "other.yaml")) == str(tmp_path / "other.yaml")


def raw_export_event(data: bytes) -> CloudEvent:
    message = {"message": {"data": base64.b64encode(data).decode(), "messageId": "m-7"}}
    return CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//pubsub", "id": "e-1"},
                      message)


VALID = {"store": "main", "destination": "gs://exports-bkt/x"}


@pytest.mark.parametrize("data, request_id", [
    (b"not json", "m-7"), (b"\xff\xfe\x00", "m-7"), (b"", "m-7"), (b"null", "m-7"), (b"[1, 2]", "m-7"),
    (b'"export"', "m-7"), (b"[" * 100_000, "m-7"), (json.dumps({"requestId": "r-1"}).encode(), "r-1"),
    *[(json.dumps({**VALID, "requestId": rid}).encode(), "m-7") for rid in (5, True, ["a"], {"a": 1}, "bad id!")],
    (json.dumps({**VALID, "mimeType": 5, "requestId": "r-1"}).encode(), "r-1"),
    (json.dumps({**VALID, "mimeType": ["image/png"]}).encode(), "m-7"),
    (json.dumps({**VALID, "query": "StudyDate=20260101", "queryLevel": ["study"]}).encode(), "m-7"),
], ids=["not-json", "not-utf8", "empty", "null", "list", "string", "deeply-nested", "no-store",
        "id-int", "id-bool", "id-list", "id-object", "id-bad-chars", "mime-int", "mime-list", "level-list"])
def test_a_malformed_pubsub_request_is_rejected_once_never_retried(monkeypatch, capsys, data, request_id):
    """Whatever the bytes, a REJECTED result (under the message id when the request has no usable requestId):
    never an unexpected error, which would be retried until the dead-letter topic."""
    s = Setup()
    serve(s, monkeypatch)
    entrypoints.export_request(raw_export_event(data))
    assert s.api.searches == [] and s.api.exports == []
    [(_, message, attributes)] = s.publisher.messages
    validate(message, attributes)
    assert message["outcome"] == "REJECTED" and message["requestId"] == request_id
    assert message["error"]["code"] == 400 and "rule" not in message["error"]
    assert "Traceback" not in capsys.readouterr().out


@pytest.mark.parametrize("data", [b"[" * 100_000, b"not json", b"[1]", json.dumps({**VALID, "requestId": 5}).encode()],
                         ids=["deeply-nested", "not-json", "list", "id-int"])
def test_a_refused_message_that_is_malformed_has_a_digest_tag_and_asks_for_no_export(data):
    refused = RefusedMessage(data, {"main": STORE})
    assert len(refused.tag) == 16 and int(refused.tag, 16) >= 0
    assert not refused.asks_for({"fingerprint": "f" * 64, "store": STORE})
