"""With ``object_names: hashed``, no log line names an object when Cloud Storage fails under an entry point
that announces no object (a follow-up, a reconcile tick): the failing calls go through the real storage
client code, over fake Google clients that raise what the real ones raise, the name in their text."""

from __future__ import annotations

import base64
import json
from typing import Any, Callable, Iterator
from urllib.parse import quote, quote_plus

import pytest
import requests
from cloudevents.http import CloudEvent
from google.api_core import exceptions as google_errors
from werkzeug.exceptions import ServiceUnavailable

from handlers import entrypoints, runtime
from handlers.batch.reporting import Reporter
from handlers.clients.storage import GcsSource, GcsStateStore
from handlers.reconcile import sweep as sweep_module
from handlers.reconcile.sweep import Sweeper
from tests.fakes import MemoryStateStore
from tests.unit import test_batching, test_reconcile

NAME = "DOE^JOHN 1960/CT 1.dcm"
HOST = "HTTPSConnectionPool(host='storage.googleapis.com', port=443): Max retries exceeded with url: "


def copy_errors() -> dict[str, Callable[[], Exception]]:
    """What a rewrite of ``NAME`` raises after google-cloud-storage's retries, each text naming the object."""
    url = f"/storage/v1/b/inbox-bkt/o/{quote(NAME, safe='')}/rewriteTo/b/state-bkt/o/staging%2Fall%2Fb%2Fx.dcm"
    server = f"svc@p.iam.gserviceaccount.com has no access to the object inbox-bkt/{NAME}."
    return {
        "retry-error": lambda: google_errors.RetryError("Timeout of 120.0s exceeded",
                                                        requests.ConnectionError(HOST + url)),
        "connection-error": lambda: requests.ConnectionError(HOST + url),
        "unavailable": lambda: google_errors.ServiceUnavailable(f"POST https://storage.googleapis.com{url}: {server}",
                                                                errors=[{"message": server, "reason": "backendError"}]),
        "unauthorized": lambda: google_errors.Unauthorized(f"POST https://storage.googleapis.com{url}: {server}"),
    }


class FakeBlob:
    def __init__(self, fails: Callable[[], Exception]) -> None:
        self.fails, self.metadata = fails, None

    def rewrite(self, source: Any, token: Any = None, retry: Any = None) -> Any:
        raise self.fails()


class FakeClient:
    """Enough of ``google.cloud.storage.Client`` for a rewrite; every rewrite raises ``fails()``."""

    def __init__(self, fails: Callable[[], Exception]) -> None:
        self.fails = fails

    def bucket(self, name: str) -> Any:
        return self

    def blob(self, name: str, generation: int | None = None) -> FakeBlob:
        return FakeBlob(self.fails)

    @property
    def client(self) -> "FakeClient":
        return self


class FailingCopies(MemoryStateStore):
    """The state bucket in memory; copies of source objects through GcsStateStore.copy_in over a failing client."""

    def __init__(self, fails: Callable[[], Exception], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gcs = GcsStateStore("state-bkt", FakeClient(fails))

    def copy_in(self, *args: Any) -> None:
        self.gcs.copy_in(*args)


def pubsub_event(body: dict) -> CloudEvent:
    data = {"message": {"data": base64.b64encode(json.dumps(body).encode()).decode(), "messageId": "m-1"}}
    return CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//pubsub", "id": "e-1"},
                      data)


def names_in(out: str) -> list[str]:
    """The log lines naming the object, in any spelling (every spelling keeps ``DOE``)."""
    return [line for line in out.splitlines() if "DOE" in line]


@pytest.mark.parametrize("error", copy_errors())
def test_a_followup_whose_copies_fail_names_no_object_in_its_logs(monkeypatch, capsys, error):
    world = test_batching.World(object_names="hashed")
    world.store = FailingCopies(copy_errors()[error], clock=world.clock)
    world.driver.store = world.store
    world.intake = world.new_intake()
    world.admit(world.upload(NAME))
    [(rule, batch)] = world.kicks
    instance = runtime.Runtime(world.config)
    instance.driver = world.driver
    monkeypatch.setattr(runtime, "_runtime", instance)
    capsys.readouterr()

    with pytest.raises(ServiceUnavailable):
        entrypoints.followup(pubsub_event({"kind": "import-batch", "rule": rule, "batch": batch}))
    out = capsys.readouterr().out
    assert names_in(out) == []
    assert "Cloud Storage copy failed" in out, out


class FailingListings:
    """Enough of ``google.cloud.storage.Client`` for listings: pages from ``store``, then what a dead endpoint
    raises after the client's retries, its URL holding the listing's ``startOffset``."""

    def __init__(self, world: test_reconcile.World, yielded: int) -> None:
        self.world, self.yielded = world, yielded

    def list_blobs(self, bucket: str, prefix: str | None = None, start_offset: str | None = None,
                   **kwargs: Any) -> Iterator[Any]:
        listed = self.world.source.list(bucket, prefix or "", start_offset)
        for item in list(listed)[:self.yielded]:
            yield FakeListed(item.name, item.generation, item.created)
        url = f"/storage/v1/b/{bucket}/o?prefix={quote_plus(prefix or '')}&startOffset={quote_plus(start_offset or '')}"
        raise google_errors.RetryError("Timeout of 120.0s exceeded", requests.ConnectionError(HOST + url))


class FakeListed:
    def __init__(self, name: str, generation: str, created: float) -> None:
        from datetime import datetime, timezone

        self.name, self.generation = name, generation
        self.time_created = datetime.fromtimestamp(created, timezone.utc)


def test_a_reconcile_tick_whose_listing_fails_names_no_object_in_its_logs(monkeypatch, capsys):
    monkeypatch.setattr(sweep_module, "PAGE", 2)
    world = test_reconcile.World(names="hashed")
    names = [f"ct/DOE^JOHN 1960/CT {number}.dcm" for number in range(4)]
    for name in names:
        world.put(name, age=test_reconcile.HOUR)
    listings = FailingListings(world, yielded=2)
    instance = runtime.Runtime(world.config)
    reporter = Reporter(world.store, world.publisher, world.config.results_topic, world.clock)
    instance.reconciler = Sweeper(world.store, GcsSource(listings), world.config, world.intake, reporter,
                                  clock=world.clock)
    monkeypatch.setattr(runtime, "_runtime", instance)

    for _ in range(2):  # the first run lists a page, then fails; the second resumes after that page's last name
        with pytest.raises(ServiceUnavailable):
            entrypoints.reconcile(pubsub_event({}))
        listings.yielded = 0
    out = capsys.readouterr().out
    assert names_in(out) == []
    assert out.count("a Google service did not answer") == 2, out
    assert "Cloud Storage listing failed: RetryError (last attempt: ConnectionError)" in out
    assert world.store.doc(test_reconcile.SWEEP_PATH)["rules"]["ct"]["after"] == names[1], "the second run resumed"


def test_with_no_config_loaded_an_unknown_errors_text_is_left_out(monkeypatch, capsys):
    monkeypatch.setattr(runtime, "_runtime", None)

    def broken() -> None:
        raise google_errors.RetryError("Timeout", requests.ConnectionError(f"{HOST}/b/inbox-bkt/o/DOE%5EJOHN"))

    monkeypatch.setattr(runtime, "get", broken)
    with pytest.raises(ServiceUnavailable):
        entrypoints.followup(pubsub_event({"kind": "import-batch", "rule": "all", "batch": "b"}))
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["error"] == "RetryError (last attempt: ConnectionError)"

