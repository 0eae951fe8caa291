"""The export existence check shared by the CLI and the Pub/Sub entry point (handlers.exports.job), on fakes."""

import base64
import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from cloudevents.http import CloudEvent

from handlers import entrypoints, runtime
from handlers.exports.request import MAX_CHECKED_PATHS, ExportRequest, ExportRequestError
from handlers.exports.job import ExportJob
from handlers.clients.healthcare import ApiError
from handlers.batch.reporting import Reporter
from handlers.retry import Deadline, RetryLater
from tests.fakes import FakeApi, FakeClock, FakePublisher, MemoryStateStore

STORE = "projects/p/locations/l/datasets/d/dicomStores/s"
STUDY = "/studies/1.2"
SERIES = "/studies/1.2/series/3.4"
INSTANCE = "/studies/1.2/series/3.4/instances/5.6"


@dataclass
class Setup:
    stored: set[str]

    def __post_init__(self) -> None:
        self.store = MemoryStateStore()
        self.api = FakeApi(stored=self.stored)
        self.publisher = FakePublisher()
        clock = FakeClock()
        self.job = ExportJob(self.store, self.api, Reporter(self.store, self.publisher, "projects/p/topics/r", clock=clock),
                             clock=clock, destinations=("gs://out-bkt/",))


def request(**kwargs) -> ExportRequest:
    return ExportRequest.build(store=STORE, destination="gs://out-bkt/dir", request_id="r1", **kwargs)


def test_paths_are_searched_at_their_level_and_present_ones_are_exported():
    s = Setup({STUDY, SERIES, INSTANCE})
    with pytest.raises(RetryLater, match="still running"):
        s.job.run(request(studies=["1.2"], series=["1.2/3.4"], instances=["1.2/3.4/5.6"]), Deadline(60))
    assert s.api.searches == [STUDY, SERIES, INSTANCE]
    assert len(s.api.exports) == 1


def test_a_path_not_in_the_store_is_refused_before_anything_is_written():
    s = Setup({STUDY})
    with pytest.raises(ExportRequestError, match=r"not in DICOM store .*/dicomStores/s: /studies/1.2/series/9.9: check"):
        s.job.run(request(studies=["1.2"], series=["1.2/9.9"]), Deadline(60))
    assert s.api.exports == [] and s.store.blobs == {} and s.store.docs == {} and s.publisher.messages == []


def test_only_the_first_paths_are_checked():
    s = Setup(None)  # every path exists
    studies = [f"1.{n}" for n in range(MAX_CHECKED_PATHS + 50)]
    with pytest.raises(RetryLater):
        s.job.run(request(studies=studies), Deadline(60))
    assert len(s.api.searches) == MAX_CHECKED_PATHS


def test_a_resumed_export_is_not_checked_again():
    s = Setup({STUDY})
    with pytest.raises(RetryLater):
        s.job.run(request(studies=["1.2"]), Deadline(60))
    s.api.stored = set()  # the study was deleted after the export started
    s.api.finish(next(iter(s.api.operations)), success=1)
    assert s.job.run(request(studies=["1.2"]), Deadline(60))["outcome"] == "SUCCEEDED"
    assert s.api.searches == [STUDY]


@pytest.mark.parametrize("error, raised, message", [
    (ApiError(404, "NOT_FOUND", "no store"), ExportRequestError, "cannot search DICOM store"),
    (ApiError(503, "UNAVAILABLE", "busy"), RetryLater, "cannot search"),
])
def test_search_errors_refuse_or_retry(monkeypatch, error, raised, message):
    s = Setup({STUDY})

    def fail(*args):
        raise error

    monkeypatch.setattr(s.api, "search_dicom", fail)
    with pytest.raises(raised, match=message):
        s.job.run(request(studies=["1.2"]), Deadline(60))
    assert s.api.exports == []


def export_event(body: dict) -> CloudEvent:
    data = {"message": {"data": base64.b64encode(json.dumps(body).encode()).decode(), "messageId": "m-7"}}
    return CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//pubsub", "id": "e-1"},
                      data)


def test_the_entry_point_rejects_a_request_naming_a_study_not_in_the_store(monkeypatch):
    s = Setup({STUDY})
    instance = SimpleNamespace(config=SimpleNamespace(stores={"main": STORE}, path="config.yaml"), exports=s.job,
                               api=s.api)
    monkeypatch.setattr(runtime, "get", lambda: instance)
    entrypoints.export_request(export_event(
        {"store": "main", "destination": "gs://out-bkt/dir", "studies": ["1.2", "7.7"], "requestId": "req-1"}))
    assert s.api.exports == []
    [(_, message, attributes)] = s.publisher.messages
    assert message["outcome"] == "REJECTED" and message["requestId"] == "req-1"
    assert "/studies/7.7" in message["error"]["message"] and "/studies/1.2," not in message["error"]["message"]
    assert attributes["outcome"] == "REJECTED"
