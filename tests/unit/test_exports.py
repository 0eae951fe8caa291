"""Export requests: validation before any call, the job's record, one result per request."""

import pytest

from handlers.exports.request import (
    ExportRequest,
    ExportRequestError,
    count_levels,
    filter_text,
    parse_filter_lines,
    request_from_message,
)
from handlers.exports.job import (
    EXPORT_SCHEMA,
    STARTING,
    ExportJob,
    RequestIdConflict,
    filter_path,
    operation_note_path,
)
from handlers.clients.healthcare import ApiError
from handlers.batch.reporting import Reporter
from handlers.retry import Deadline, RetryLater
from tests.fakes import FakeApi, FakeClock, FakePublisher, MemoryStateStore

STORE = "projects/p/locations/l/datasets/d/dicomStores/s"


def test_filter_lines_accept_the_three_levels_and_both_line_endings():
    text = "/studies/1.2.3\r\n\n/studies/1.2.4/series/5.6\n/studies/1.2.4/series/5.6/instances/7.8\n"
    assert parse_filter_lines(text, "f.txt") == [
        "/studies/1.2.3", "/studies/1.2.4/series/5.6", "/studies/1.2.4/series/5.6/instances/7.8"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("/studies/1.2.3\nstudies/1.2\n", "f.txt:2: 'studies/1.2' is not /studies/STUDY_UID"),
        ("/studies/1.2.3/instances/4\n", "f.txt:1:"),
        ("/studies/1..2\n", "f.txt:1: study UID '1..2' is not a DICOM UID"),
        ("/studies/1.2/series/abc\n", "f.txt:1: series UID 'abc' is not a DICOM UID"),
        ("/studies/" + "1" * 65 + "\n", "at most 64 characters"),
    ],
)
def test_bad_filter_lines_name_file_and_line(text, message):
    with pytest.raises(ExportRequestError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_filter_lines(text, "f.txt")


def test_request_builds_paths_without_duplicates_and_counts_levels():
    request = ExportRequest.build(store=STORE, destination="gs://out-bkt/exports", studies=["1.2", "1.2"],
                                  series=["1.3/4.5"], instances=["1.3/4.5/6.7"], filter_lines=["/studies/1.2"])
    assert request.paths == ("/studies/1.2", "/studies/1.3/series/4.5", "/studies/1.3/series/4.5/instances/6.7")
    assert count_levels(request.paths) == {"studies": 1, "series": 1, "instances": 1}
    assert filter_text(request.paths).endswith("/instances/6.7\n")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"series": ["1.2"]}, "--series '1.2' must be STUDY_UID/SERIES_UID"),
        ({"instances": ["1/2"]}, "--instance '1/2' must be STUDY_UID/SERIES_UID/INSTANCE_UID"),
        ({"studies": ["1.2.x"]}, "study UID '1.2.x' is not a DICOM UID"),
        ({"destination": "out-bkt/dir"}, "not a Cloud Storage URI"),
        ({"destination": "gs://out-bkt/dir/*"}, "has a wildcard"),
        ({"mime_type": "image/gif"}, "not one the API exports"),
        ({"request_id": "../etc"}, "requestId"),
    ],
)
def test_invalid_requests_are_refused_before_any_call(kwargs, message):
    args = {"store": STORE, "destination": "gs://out-bkt/dir", **kwargs}
    with pytest.raises(ExportRequestError, match=message.replace("(", r"\(").replace("*", r"\*")):
        ExportRequest.build(**args)


def test_bucket_only_destination_and_accepted_mime_types():
    for mime in ("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", "image/png",
                 "application/octet-stream; transfer-syntax=*", "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"):
        assert ExportRequest.build(store=STORE, destination="gs://out-bkt", mime_type=mime).mime_type == mime


def test_message_requests_resolve_store_aliases_and_check_fields():
    request = request_from_message({"store": "main", "destination": "gs://out-bkt/x", "studies": ["1.2"],
                                    "filterLines": ["/studies/3.4"]}, {"main": STORE}, "msg-1")
    assert request.store == STORE and request.request_id == "msg-1"
    assert request.paths == ("/studies/1.2", "/studies/3.4")
    with pytest.raises(ExportRequestError, match="not one of the stores in config.yaml"):
        request_from_message({"store": "nope", "destination": "gs://out-bkt/x"}, {"main": STORE}, "m")
    with pytest.raises(ExportRequestError, match="unknown field"):
        request_from_message({"store": "main", "destination": "gs://out-bkt/x", "study": "1"}, {"main": STORE}, "m")
    with pytest.raises(ExportRequestError, match="'studies' must be a list"):
        request_from_message({"store": "main", "destination": "gs://out-bkt/x", "studies": "1.2"}, {"main": STORE}, "m")


class Setup:
    def __init__(self):
        self.clock = FakeClock()
        self.store = MemoryStateStore()
        self.api = FakeApi()
        self.publisher = FakePublisher()
        self.job = self.new_job()

    def new_job(self):
        reporter = Reporter(self.store, self.publisher, "projects/p/topics/results", clock=self.clock)
        return ExportJob(self.store, self.api, reporter, clock=self.clock, deadline_hours=1,
                         destinations=("gs://out-bkt/",))


def test_filtered_export_writes_the_filter_file_and_reports_once():
    s = Setup()
    request = ExportRequest.build(store=STORE, destination="gs://out-bkt/dir", studies=["1.2"], request_id="r1")
    with pytest.raises(RetryLater, match="still running"):
        s.job.run(request, Deadline(60))
    [(store, body)] = s.api.exports
    assert body == {"gcsDestination": {"uriPrefix": "gs://out-bkt/dir", "mimeType": "application/dicom; transfer-syntax=*"},
                    "filterConfig": {"resourcePathsGcsUri": f"gs://state-bkt/{filter_path(request)}"}}
    assert filter_path(request).startswith("exports/r1.")
    assert s.store.blobs[filter_path(request)][0] == b"/studies/1.2\n"

    s.api.finish(next(iter(s.api.operations)), success=4)
    result = s.new_job().run(request, Deadline(60))
    assert result["schema"] == EXPORT_SCHEMA and result["outcome"] == "SUCCEEDED"
    assert result["counter"] == {"success": 4, "failure": 0}
    assert result["filter"] == {"uri": f"gs://state-bkt/{filter_path(request)}", "studies": 1, "series": 0,
                                "instances": 0, "query": None}
    assert s.new_job().run(request, Deadline(60)) == result
    assert len(s.api.exports) == 1 and len(s.publisher.messages) == 1


def record_writes(store: MemoryStateStore, request_id: str) -> int:
    return store.ops.count(("write", f"exports/{request_id}.json"))


def test_the_record_is_written_three_times_created_claimed_then_result_then_done():
    """Cloud Storage paces writes of one name a second apart: no claim or operation write before the result."""
    s = Setup()
    request = ExportRequest.build(store=STORE, destination="gs://out-bkt/dir", studies=["1.2"], request_id="r1")
    with pytest.raises(RetryLater, match="still running"):
        s.job.run(request, Deadline(60))
    assert record_writes(s.store, "r1") == 1 and len(s.api.exports) == 1
    [operation] = s.api.operations
    claimed_by = s.store.read("exports/r1.json").data["callBy"]
    assert s.store.read(operation_note_path("r1", claimed_by)).data["operation"] == operation
    s.api.finish(operation, success=2)
    s.new_job().run(request, Deadline(60))
    assert record_writes(s.store, "r1") == 3
    assert s.store.read("exports/r1.json").data["state"] == "done" and len(s.api.exports) == 1


@pytest.mark.parametrize("other, differs", [
    ({"destination": "gs://out-bkt/elsewhere"}, "different destination"),
    ({"studies": ["1.3"]}, "different UIDs, filter lines or query"),
    ({"mime_type": "image/png"}, "different MIME type"),
])
def test_a_request_id_reused_with_other_arguments_is_refused_not_answered_with_the_first_result(other, differs):
    s = Setup()
    first = dict(store=STORE, destination="gs://out-bkt/dir", studies=["1.2"], request_id="r1")
    with pytest.raises(RetryLater, match="still running"):
        s.job.run(ExportRequest.build(**first), Deadline(60))
    s.api.finish(next(iter(s.api.operations)), success=4)
    assert s.new_job().run(ExportRequest.build(**first), Deadline(60))["outcome"] == "SUCCEEDED"
    with pytest.raises(RequestIdConflict, match=f"requestId r1 already names an export with other arguments "
                                                f"\\({differs}\\): give this export a new requestId") as info:
        s.new_job().run(ExportRequest.build(**{**first, **other}), Deadline(60))
    assert info.value.tag == ExportRequest.build(**{**first, **other}).tag and len(s.api.exports) == 1
    same = {**first, "studies": ["1.2", "1.2"], "destination": "gs://out-bkt/dir/"}  # the same, written otherwise
    assert s.new_job().run(ExportRequest.build(**same), Deadline(60))["outcome"] == "SUCCEEDED"
    assert len(s.publisher.messages) == 1


def test_a_conflicting_request_racing_an_export_never_overwrites_its_filter_file():
    """The API reads the filter file when the operation runs: a request refused later must not have rewritten it."""
    s = Setup()
    winner = ExportRequest.build(store=STORE, destination="gs://out-bkt/dir", studies=["1.2"], request_id="r1")
    loser = ExportRequest.build(store=STORE, destination="gs://out-bkt/dir", studies=["1.3"], request_id="r1")
    real_write = s.store.write_text

    def winner_starts_first(path, text):
        if text == filter_text(loser.paths) and not s.api.exports:  # the loser found no record, the winner goes on
            with pytest.raises(RetryLater, match="still running"):
                s.new_job().run(winner, Deadline(60))
        real_write(path, text)

    s.store.write_text = winner_starts_first
    with pytest.raises(RequestIdConflict):
        s.job.run(loser, Deadline(60))
    [(_, body)] = s.api.exports
    exported = body["filterConfig"]["resourcePathsGcsUri"].removeprefix("gs://state-bkt/")
    assert s.store.blobs[exported][0] == b"/studies/1.2\n"
    assert [path for path in s.store.blobs if path.endswith(".filter.txt")] == [exported]  # the loser's is deleted
    s.api.finish(next(iter(s.api.operations)), success=1)
    assert s.new_job().run(winner, Deadline(60))["filter"]["uri"] == f"gs://state-bkt/{exported}"


def test_whole_store_export_has_no_filter():
    s = Setup()
    request = ExportRequest.build(store=STORE, destination="gs://out-bkt/all", request_id="r2")
    with pytest.raises(RetryLater):
        s.job.run(request, Deadline(60))
    assert "filterConfig" not in s.api.exports[0][1]


def test_rejected_export_call_is_reported_with_a_hint():
    s = Setup()
    s.api.import_errors = [ApiError(403, "PERMISSION_DENIED", "no")]
    request = ExportRequest.build(store=STORE, destination="gs://out-bkt/dir", request_id="r3")
    result = s.job.run(request, Deadline(60))
    assert result["outcome"] == "REJECTED" and "roles/storage.objectAdmin on gs://out-bkt" in result["hint"]


def test_invalid_request_is_reported_once_even_when_redelivered():
    s = Setup()
    first = s.job.reject("m-1", "main", None, "study UID 'x' is not a DICOM UID", Deadline(60))
    second = s.new_job().reject("m-1", "main", None, "study UID 'x' is not a DICOM UID", Deadline(60))
    assert first == second and first["outcome"] == "REJECTED"
    assert first["error"]["message"] == "study UID 'x' is not a DICOM UID"
    assert len(s.publisher.messages) == 1


def test_a_valid_request_reusing_the_id_of_a_refusal_being_reported_is_refused_and_calls_nothing():
    s = Setup()
    valid = ExportRequest.build(store=STORE, destination="gs://out-bkt/dir", studies=["1.2"], request_id="r1")
    real_create, delivered = s.store.create, []
    keeps = "requestId r1 was refused before .* keeps that REJECTED result: send the request again with a new requestId"

    def create_then_deliver(path, data):
        generation = real_create(path, data)
        if path == "exports/r1.json" and not delivered:  # the valid request arrives before the refusal is reported
            delivered.append(path)
            with pytest.raises(ExportRequestError, match=keeps):
                s.new_job().run(valid, Deadline(60))
        return generation

    s.store.create = create_then_deliver
    s.publisher.failures = 1
    with pytest.raises(RetryLater, match="results topic unavailable"):
        s.job.reject("r1", "main", None, "study UID 'x' is not a DICOM UID", Deadline(60))
    assert delivered and s.api.exports == [] and s.publisher.messages == []
    with pytest.raises(ExportRequestError, match=keeps):
        s.new_job().run(valid, Deadline(60))
    # the entry point reports the valid request's refusal with reject(): the id's result, published once
    result = s.job.reject("r1", "main", None, "refused", Deadline(60))
    assert result["outcome"] == "REJECTED" and result["error"]["message"] == "study UID 'x' is not a DICOM UID"
    assert s.api.exports == [] and len(s.publisher.messages) == 1
    assert s.job.reject("r1", "main", None, "study UID 'x' is not a DICOM UID", Deadline(60)) == result
    assert len(s.publisher.messages) == 1


def claimed_record(s: Setup, request_id: str, claimed_at: float) -> None:
    """A record whose call a worker claimed at ``claimed_at`` and which noted no operation (it died in the call)."""
    s.store.create(f"exports/{request_id}.json", {
        "state": STARTING, "requestId": request_id, "store": STORE, "destination": "gs://out-bkt/dir",
        "mimeType": "application/dicom; transfer-syntax=*", "filterUri": None, "filter": None,
        "requestedAt": claimed_at, "operation": None, "callStartedAt": claimed_at, "callBy": "dead-worker"})


def test_a_claimed_call_without_a_note_is_waited_for_then_taken_over():
    s = Setup()
    request = ExportRequest.build(store=STORE, destination="gs://out-bkt/dir", request_id="r5")
    claimed_record(s, "r5", s.clock())
    with pytest.raises(RetryLater, match="another worker is starting export r5"):
        s.new_job().run(request, Deadline(60))
    assert s.api.exports == []
    s.clock.sleep(121)
    with pytest.raises(RetryLater, match="still running"):
        s.new_job().run(request, Deadline(60))
    assert len(s.api.exports) == 1 and s.store.read("exports/r5.json").data["callBy"] != "dead-worker"


def test_a_redelivery_follows_the_noted_operation_without_calling_again():
    s = Setup()
    request = ExportRequest.build(store=STORE, destination="gs://out-bkt/dir", request_id="r6")
    claimed_record(s, "r6", s.clock())
    s.store.create(operation_note_path("r6", "dead-worker"), {"operation": "projects/p/operations/noted"})
    s.api.operations["projects/p/operations/noted"] = {"name": "projects/p/operations/noted"}
    s.api.finish("projects/p/operations/noted", success=3)
    result = s.new_job().run(request, Deadline(60))
    assert s.api.exports == [] and result["operation"] == "projects/p/operations/noted"
    assert result["counter"] == {"success": 3, "failure": 0}


@pytest.mark.parametrize("make_call_wait", ["retryable refusal", "budget spent before the call"])
def test_a_call_put_off_releases_its_claim_so_the_next_delivery_calls_at_once(make_call_wait):
    s = Setup()
    request = ExportRequest.build(store=STORE, destination="gs://out-bkt/dir", request_id="r7")
    if make_call_wait == "retryable refusal":
        s.api.import_errors = [ApiError(503, "UNAVAILABLE", "try later")]
        budget = Deadline(60)
    else:
        budget = Deadline(0)
    with pytest.raises(RetryLater):
        s.job.run(request, budget)
    assert s.api.exports == [] and s.store.read("exports/r7.json").data["callBy"] is None
    with pytest.raises(RetryLater, match="still running"):
        s.new_job().run(request, Deadline(60))
    assert len(s.api.exports) == 1
