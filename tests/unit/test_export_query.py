"""Export by query: the QIDO-RS parameters checked before any call, the search paged to its end, the cap,
the filter file written from what was found, and the result message that says so (schema-validated)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from cloudevents.http import CloudEvent

from handlers import entrypoints, runtime
from handlers.batch.reporting import Reporter
from handlers.clients.healthcare import ApiError
from handlers.exports.job import ExportJob, filter_path, search_progress_path
from handlers.exports.query import CAP_RULE, Query, search_paths
from handlers.exports.request import ExportRequest, ExportRequestError, request_from_message
from handlers.retry import Deadline, RetryLater
from tests.fakes import FakeApi, FakeClock, FakePublisher, MemoryStateStore
from tests.message_schemas import validate

STORE = "projects/p/locations/l/datasets/d/dicomStores/s"
WHERE = "ModalitiesInStudy=CT&StudyDate=20260101-20261231"


# -- parsing --------------------------------------------------------------------------------------------------

def test_a_query_keeps_its_text_level_and_parameters():
    query = Query.parse("?" + WHERE + "&00100020=P-1&fuzzymatching=false", "series")
    assert query.where == WHERE + "&00100020=P-1&fuzzymatching=false" and query.level == "series"
    assert query.params == (("ModalitiesInStudy", "CT"), ("StudyDate", "20260101-20261231"), ("00100020", "P-1"),
                            ("fuzzymatching", "false"))
    for value in ("20260101", "-20261231", "20260101-", ""):
        assert Query.parse(f"StudyDate={value}").params == (("StudyDate", value),)
    assert Query.parse("StudyTime=0800-1730&AcquisitionDateTime=2026-").level == "study"


@pytest.mark.parametrize("where, level, message", [
    ("", "study", "the query is empty"),
    ("  ?", "study", "the query is empty"),
    (None, "study", "the query is empty"),
    ("StudyDate", "study", "is not KEY=VALUE&KEY=VALUE"),
    ("StudyDate=2026-01-01", "study", "StudyDate='2026-01-01' is not a YYYYMMDD value or range: write it as "
                                      "20260101-20261231, -20261231 or 20260101-"),
    ("StudyDate=20261231-20260101", "study", "the range ends before it starts"),
    ("StudyDate=-", "study", "is not a YYYYMMDD value or range"),
    ("StudyTime=8:00", "study", "is not a HHMMSS value or range"),
    ("limit=10&Modality=CT", "study", "query parameter 'limit' is set by the exporter"),
    ("offset=10", "study", "query parameter 'offset' is set by the exporter"),
    ("includefield=all", "study", "query parameter 'includefield' is set by the exporter"),
    ("Study Date=1", "study", "query key 'Study Date' is not a DICOM keyword or tag"),
    ("Modality=CT&Modality=MR", "series", "query key 'Modality' is given twice"),
    ("fuzzymatching=yes&PatientName=X", "study", "fuzzymatching must be true or false"),
    ("fuzzymatching=true", "study", "has no match key"),
    (WHERE, "patient", "query level 'patient' must be one of study, series, instance"),
])
def test_bad_queries_are_refused_before_any_call(where, level, message):
    with pytest.raises(ExportRequestError, match=message.replace("(", r"\(").replace("?", r"\?")):
        Query.parse(where, level)


def test_a_query_excludes_listed_paths_and_pubsub_requests_carry_one():
    with pytest.raises(ExportRequestError, match="either a query or studies"):
        ExportRequest.build(store=STORE, destination="gs://out/x", studies=["1.2"], query=Query.parse(WHERE))
    request = request_from_message({"store": "main", "destination": "gs://out/x", "query": WHERE,
                                    "queryLevel": "instance"}, {"main": STORE}, "m-1")
    assert request.query == Query.parse(WHERE, "instance") and request.paths == ()
    with pytest.raises(ExportRequestError, match="the query is empty"):
        request_from_message({"store": "main", "destination": "gs://out/x", "queryLevel": "series"}, {"main": STORE}, "m")


# -- searching --------------------------------------------------------------------------------------------------

def study(uid: str, series: str | None = None, sop: str | None = None) -> dict[str, Any]:
    item = {"0020000D": {"vr": "UI", "Value": [uid]}}
    if series:
        item["0020000E"] = {"vr": "UI", "Value": [series]}
    if sop:
        item["00080018"] = {"vr": "UI", "Value": [sop]}
    return item


@dataclass
class QidoStore:
    """A store answering QIDO with limit/offset over ``matches``, recording each request."""

    matches: list[dict[str, Any]]
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    errors: list[ApiError] = field(default_factory=list)
    ignore_offset: bool = False

    def search_dicom(self, store: str, resource: str, params: dict[str, str], deadline: Deadline) -> list[dict]:
        self.requests.append((resource, dict(params)))
        if self.errors:
            raise self.errors.pop(0)
        offset = 0 if self.ignore_offset else int(params["offset"])
        return self.matches[offset:offset + int(params["limit"])]


def test_the_search_pages_until_an_empty_page_and_keeps_store_order():
    api = QidoStore([study(f"1.{n}") for n in range(7)])
    seen = []
    found = search_paths(api, STORE, Query.parse(WHERE), cap=100, deadline=Deadline(60), page_size=3,
                         on_page=lambda n, pages, last: seen.append((n, pages, last)))
    assert found.paths == tuple(f"/studies/1.{n}" for n in range(7)) and found.pages == 4
    assert [params["offset"] for _, params in api.requests] == ["0", "3", "6", "7"]
    assert api.requests[0] == ("studies", {"ModalitiesInStudy": "CT", "StudyDate": "20260101-20261231",
                                           "includefield": "0020000D", "limit": "3", "offset": "0"})
    assert seen == [(3, 1, False), (6, 2, False), (7, 3, False), (7, 4, True)]


def test_series_and_instance_levels_list_their_own_paths_and_pages_are_capped_at_the_api_maximum():
    api = QidoStore([study("1.1", "2.1"), study("1.1", "2.2")])
    found = search_paths(api, STORE, Query.parse("Modality=CT", "series"), cap=10, deadline=Deadline(60),
                         page_size=10**6)
    assert found.paths == ("/studies/1.1/series/2.1", "/studies/1.1/series/2.2")
    assert api.requests[0][0] == "series" and api.requests[0][1]["limit"] == "5000"
    assert api.requests[0][1]["includefield"] == "0020000D,0020000E"
    api = QidoStore([study("1.1", "2.1", "3.1")])
    found = search_paths(api, STORE, Query.parse("SOPClassUID=1.2", "instance"), cap=10, deadline=Deadline(60))
    assert found.paths == ("/studies/1.1/series/2.1/instances/3.1",) and api.requests[0][1]["limit"] == "50000"


def test_a_server_ignoring_offset_does_not_loop_forever():
    api = QidoStore([study("1.1"), study("1.2")], ignore_offset=True)
    found = search_paths(api, STORE, Query.parse(WHERE), cap=100, deadline=Deadline(60), page_size=2)
    assert found.paths == ("/studies/1.1", "/studies/1.2") and len(api.requests) == 2


def test_more_matches_than_the_cap_are_refused_naming_the_rule():
    api = QidoStore([study(f"1.{n}") for n in range(6)])
    with pytest.raises(ExportRequestError) as info:
        search_paths(api, STORE, Query.parse(WHERE), cap=5, deadline=Deadline(60), page_size=4)
    assert info.value.rule == CAP_RULE
    assert str(info.value) == ("the query 'ModalitiesInStudy=…&StudyDate=…' matches more than 5 studies in "
                               f"{STORE}: narrow it (a shorter date range, another attribute) or raise "
                               "exports.max_query_results in config.yaml"), "search_paths alone hides every value"
    assert search_paths(QidoStore(api.matches[:5]), STORE, Query.parse(WHERE), cap=5, deadline=Deadline(60),
                        page_size=4).paths[-1] == "/studies/1.4"


def test_refused_queries_are_final_and_unavailable_apis_retry():
    api = QidoStore([], errors=[ApiError(400, "INVALID_ARGUMENT", "bad StudyDate")])
    with pytest.raises(ExportRequestError, match="refused the query .* bad StudyDate: fix the query"):
        search_paths(api, STORE, Query.parse(WHERE), cap=5, deadline=Deadline(60))
    api = QidoStore([], errors=[ApiError(503, "UNAVAILABLE", "busy")])
    with pytest.raises(RetryLater):
        search_paths(api, STORE, Query.parse(WHERE), cap=5, deadline=Deadline(60))


# -- the job ---------------------------------------------------------------------------------------------------------

class QueryApi(FakeApi):
    """The usual fake API (exports, operations) whose QIDO search is a QidoStore."""

    def __init__(self, matches):
        super().__init__()
        self.qido = QidoStore(matches)

    def search_dicom(self, store, resource, params, deadline):
        return self.qido.search_dicom(store, resource, params, deadline)


def job_for(api, cap=100):
    clock = FakeClock()
    store = MemoryStateStore()
    publisher = FakePublisher()
    reporter = Reporter(store, publisher, "projects/p/topics/results", clock=clock)
    return ExportJob(store, api, reporter, clock=clock, destinations=("gs://out/",), max_query_results=cap), store, publisher


def test_a_query_export_writes_what_it_found_as_the_filter_file_and_reports_the_query():
    api = QueryApi([study("1.1"), study("1.2"), study("1.3")])
    job, store, publisher = job_for(api)
    request = ExportRequest.build(store=STORE, destination="gs://out/cohort", request_id="q1", query=Query.parse(WHERE))
    with pytest.raises(RetryLater, match="still running"):
        job.run(request, Deadline(60), page_size=2)
    assert store.blobs[filter_path(request)][0] == b"/studies/1.1\n/studies/1.2\n/studies/1.3\n"
    [(_, body)] = api.exports
    assert body["filterConfig"] == {"resourcePathsGcsUri": f"gs://state-bkt/{filter_path(request)}"}
    api.finish(next(iter(api.operations)), success=9)
    result = job.run(request, Deadline(60))
    assert result["filter"] == {"uri": f"gs://state-bkt/{filter_path(request)}", "studies": 3, "series": 0,
                                "instances": 0, "query": {"where": WHERE, "level": "study", "matches": 3, "pages": 3}}
    assert len(api.qido.requests) == 3, "a resumed export does not search again"
    [(_, message, attributes)] = publisher.messages
    validate(message, attributes)


class SlowQidoApi(QueryApi):
    """A store so slow that each delivery's budget ends after ``pages_per_delivery`` pages."""

    def __init__(self, matches, pages_per_delivery):
        super().__init__(matches)
        self.pages_per_delivery = pages_per_delivery
        self.deadline, self.pages = None, 0

    def search_dicom(self, store, resource, params, deadline):
        page = super().search_dicom(store, resource, params, deadline)
        if deadline is not self.deadline:
            self.deadline, self.pages = deadline, 0
        self.pages += 1
        if self.pages == self.pages_per_delivery:
            deadline.seconds = -1
        return page


def test_a_search_longer_than_one_delivery_resumes_where_the_last_delivery_stopped():
    api = SlowQidoApi([study(f"1.{n}") for n in range(7)], pages_per_delivery=2)
    job, store, publisher = job_for(api)
    request = ExportRequest.build(store=STORE, destination="gs://out/x", request_id="q5", query=Query.parse(WHERE))
    for delivery in range(2):
        with pytest.raises(RetryLater, match="the search resumes there on the next delivery"):
            job.run(request, Deadline(60), page_size=2)
    assert store.doc(search_progress_path(request))["paths"] == [f"/studies/1.{n}" for n in range(7)]
    with pytest.raises(RetryLater, match="still running"):
        job.run(request, Deadline(60), page_size=2)
    assert search_progress_path(request) not in store.docs, "the record and filter file hold the search: progress deleted"
    assert [params["offset"] for _, params in api.qido.requests] == ["0", "2", "4", "6", "7"]
    assert store.blobs[filter_path(request)][0].decode().splitlines() == [f"/studies/1.{n}" for n in range(7)]
    api.finish(next(iter(api.operations)), success=7)
    result = job.run(request, Deadline(60))
    assert result["filter"]["query"] == {"where": WHERE, "level": "study", "matches": 7, "pages": 5}


def test_the_progress_of_a_search_refused_on_a_later_delivery_is_deleted():
    api = SlowQidoApi([study(f"1.{n}") for n in range(7)], pages_per_delivery=2)
    job, store, _ = job_for(api, cap=5)
    request = ExportRequest.build(store=STORE, destination="gs://out/x", request_id="q7", query=Query.parse(WHERE))
    with pytest.raises(RetryLater, match="the search resumes there on the next delivery"):
        job.run(request, Deadline(60), page_size=2)
    assert search_progress_path(request) in store.docs
    with pytest.raises(ExportRequestError, match=CAP_RULE):
        job.run(request, Deadline(60), page_size=2)
    assert search_progress_path(request) not in store.docs, "a refused query is never resumed"


def test_saved_progress_of_another_query_under_the_same_id_is_not_resumed():
    api = QueryApi([study("1.1"), study("1.2")])
    job, store, _ = job_for(api)
    request = ExportRequest.build(store=STORE, destination="gs://out/x", request_id="q6", query=Query.parse(WHERE))
    store.create(search_progress_path(request), {"store": STORE, "where": "Modality=MR", "level": "study",
                                                 "paths": ["/studies/9.9"], "pages": 1})
    with pytest.raises(RetryLater, match="still running"):
        job.run(request, Deadline(60))
    assert store.blobs[filter_path(request)][0] == b"/studies/1.1\n/studies/1.2\n"


def test_requests_reusing_an_id_with_other_queries_keep_their_own_search_progress():
    """Both search until one creates the record: neither overwrites, resumes or deletes the other's progress."""
    api = SlowQidoApi([study(f"1.{n}") for n in range(7)], pages_per_delivery=1)
    job, store, _ = job_for(api, cap=5)
    first = ExportRequest.build(store=STORE, destination="gs://out/x", request_id="q8", query=Query.parse(WHERE))
    other = ExportRequest.build(store=STORE, destination="gs://out/x", request_id="q8",
                                query=Query.parse("ModalitiesInStudy=CT"))
    with pytest.raises(RetryLater, match="the search resumes there on the next delivery"):
        job.run(first, Deadline(60), page_size=2)
    saved = store.doc(search_progress_path(first))
    assert saved["paths"] == ["/studies/1.0", "/studies/1.1"]
    with pytest.raises(RetryLater, match="the search resumes there on the next delivery"):
        job.run(other, Deadline(60), page_size=2)
    assert store.doc(search_progress_path(first)) == saved
    with pytest.raises(RetryLater, match="the search resumes there on the next delivery"):
        job.run(other, Deadline(60), page_size=2)
    with pytest.raises(ExportRequestError, match=CAP_RULE):  # refused: it deletes its own progress, only that
        job.run(other, Deadline(60), page_size=2)
    assert search_progress_path(other) not in store.docs and store.doc(search_progress_path(first)) == saved


def test_a_query_matching_nothing_is_refused_before_anything_is_written():
    api = QueryApi([])
    job, store, _ = job_for(api)
    request = ExportRequest.build(store=STORE, destination="gs://out/x", request_id="q2", query=Query.parse(WHERE))
    with pytest.raises(ExportRequestError, match="matches no study in .*: check its values"):
        job.run(request, Deadline(60))
    assert store.blobs == {} and store.docs == {} and api.exports == []


def export_event(body: dict) -> CloudEvent:
    data = {"message": {"data": base64.b64encode(json.dumps(body).encode()).decode(), "messageId": "m-9"}}
    return CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//pubsub", "id": "e-9"},
                      data)


def test_a_pubsub_query_over_the_cap_gets_a_rejected_result_naming_the_cap(monkeypatch):
    api = QueryApi([study(f"1.{n}") for n in range(3)])
    job, store, publisher = job_for(api, cap=2)
    instance = SimpleNamespace(config=SimpleNamespace(stores={"main": STORE}, path="config.yaml"), exports=job, api=api)
    monkeypatch.setattr(runtime, "get", lambda: instance)
    entrypoints.export_request(export_event({"store": "main", "destination": "gs://out/x", "query": WHERE,
                                             "requestId": "q3"}))
    [(_, message, attributes)] = publisher.messages
    validate(message, attributes)
    assert message["outcome"] == "REJECTED" and message["error"]["rule"] == CAP_RULE
    assert message["error"]["code"] == 400 and "matches more than 2 studies" in message["error"]["message"]
    assert api.exports == [] and not [path for path in store.blobs if path.endswith(".filter.txt")]


# -- query values are patient data -------------------------------------------------------------------------------------

PATIENT_WHERE = "PatientName=DOE^JOHN&PatientID=MRN123456&StudyDate=20260101-&fuzzymatching=true"


def test_results_and_logs_show_no_value_naming_the_patient_and_no_value_at_all_with_hashed_names():
    query = Query.parse(PATIENT_WHERE + "&00100030=19600101&AccessionNumber=A1")
    assert query.shown(False) == ("PatientName=…&PatientID=…&StudyDate=20260101-&fuzzymatching=true&00100030=…"
                                  "&AccessionNumber=…")
    assert query.shown(True) == ("PatientName=…&PatientID=…&StudyDate=…&fuzzymatching=true&00100030=…"
                                 "&AccessionNumber=…")


@pytest.mark.parametrize("hashed", [False, True], ids=["plain", "hashed"])
def test_an_export_by_patient_keeps_the_query_as_written_only_in_the_searchs_progress(hashed, monkeypatch, capsys):
    api = SlowQidoApi([study(f"1.{n}") for n in range(3)], pages_per_delivery=1)
    job, store, publisher = job_for(api)
    job.hashed_names = hashed
    request = ExportRequest.build(store=STORE, destination="gs://out/x", request_id="p1",
                                  query=Query.parse(PATIENT_WHERE))
    with pytest.raises(RetryLater) as paused:
        job.run(request, Deadline(60), page_size=2)
    assert "DOE" not in str(paused.value)
    assert store.doc(search_progress_path(request))["where"] == PATIENT_WHERE, "a resumed search asks the same"
    while not api.operations:
        with pytest.raises(RetryLater):
            job.run(request, Deadline(60), page_size=2)
    api.finish(next(iter(api.operations)), success=3)
    result = job.run(request, Deadline(60))
    shown = Query.parse(PATIENT_WHERE).shown(hashed)
    assert result["filter"]["query"]["where"] == shown
    assert ("StudyDate=…" in shown) is hashed
    for path, (raw, _) in store.docs.items():
        assert "DOE" not in raw and "MRN" not in raw, path
    assert "DOE" not in json.dumps([message for _, message, _ in publisher.messages])
    assert "DOE" not in capsys.readouterr().out


def test_a_refused_query_by_patient_names_no_value_in_its_rejected_result_or_the_log(monkeypatch, capsys):
    api = QueryApi([])
    job, store, publisher = job_for(api)
    instance = SimpleNamespace(config=SimpleNamespace(stores={"main": STORE}, path="config.yaml"), exports=job, api=api)
    monkeypatch.setattr(runtime, "get", lambda: instance)
    for where in (PATIENT_WHERE, "PatientBirthDate=1960-01-01", "PatientName=DOE^JOHN&&"):
        entrypoints.export_request(export_event({"store": "main", "destination": "gs://out/x", "query": where,
                                                 "requestId": f"p-{len(publisher.messages)}"}))
    errors = [message["error"]["message"] for _, message, _ in publisher.messages]
    assert len(errors) == 3 and "matches no study" in errors[0] and "PatientBirthDate is not a YYYYMMDD" in errors[1]
    assert not [text for text in [*errors, capsys.readouterr().out, *map(json.dumps, store.docs.values())]
                if "DOE" in text or "MRN" in text or "1960" in text]
