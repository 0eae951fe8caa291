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
from handlers.exports.job import EXPORT_SCHEMA, ExportJob
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
                    "filterConfig": {"resourcePathsGcsUri": "gs://state-bkt/exports/r1.filter.txt"}}
    assert s.store.blobs["exports/r1.filter.txt"][0] == b"/studies/1.2\n"

    s.api.finish(next(iter(s.api.operations)), success=4)
    result = s.new_job().run(request, Deadline(60))
    assert result["schema"] == EXPORT_SCHEMA and result["outcome"] == "SUCCEEDED"
    assert result["counter"] == {"success": 4, "failure": 0}
    assert result["filter"] == {"uri": "gs://state-bkt/exports/r1.filter.txt", "studies": 1, "series": 0, "instances": 0,
                                "query": None}
    assert s.new_job().run(request, Deadline(60)) == result
    assert len(s.api.exports) == 1 and len(s.publisher.messages) == 1


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
    first = s.job.reject("m-1", "main", None, "study UID 'x' is not a DICOM UID")
    second = s.new_job().reject("m-1", "main", None, "study UID 'x' is not a DICOM UID")
    assert first == second and first["outcome"] == "REJECTED"
    assert first["error"]["message"] == "study UID 'x' is not a DICOM UID"
    assert len(s.publisher.messages) == 1
