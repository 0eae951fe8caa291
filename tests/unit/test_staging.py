"""Staging copies started while the batch is open (handlers/batch/staging.py, the driver's window)."""

import time

import pytest

from handlers.batch import layout
from handlers.batch.staging import GONE, StagingCopies
from handlers.clients.storage import SourceUnreadable, copy_refusal
from handlers.retry import Deadline, RetryLater
from tests.fakes import MemoryStateStore
from tests.unit.test_batching import World


def member(number: int) -> dict[str, str]:
    return {"id": f"{number:032x}", "bucket": "inbox-bkt", "name": f"s/{number}.dcm", "generation": "1"}


def copies(store: MemoryStateStore) -> list[str]:
    return [path for op, path in store.ops if op == "copy"]


def test_finish_reuses_the_copies_started_early_and_copies_the_rest():
    store = MemoryStateStore()
    members = [member(n) for n in range(5)]
    for m in members:
        store.add_source(m["bucket"], m["name"], m["generation"])
    staging = StagingCopies(store, "all", "b1")
    staging.start(members[:3])
    assert staging.finish(members) == []
    staging.close()
    assert sorted(copies(store)) == sorted(layout.staging_path("all", "b1", m["id"]) for m in members)


def test_a_generation_gone_is_reported_and_not_copied():
    store = MemoryStateStore()
    members = [member(n) for n in range(3)]
    for m in members[:2]:
        store.add_source(m["bucket"], m["name"], m["generation"])
    staging = StagingCopies(store, "all", "b1")
    staging.start(members)
    assert staging.finish(members) == [{**members[2], "reason": GONE}]
    staging.close()


class FlakyCopies(MemoryStateStore):
    """The first copy of each name fails with a transient error; ``always`` fails every copy."""

    def __init__(self, always: bool = False) -> None:
        super().__init__()
        self.always, self.failed = always, set()

    def copy_in(self, source_bucket, source_name, source_generation, path, metadata):
        if self.always or path not in self.failed:
            self.failed.add(path)
            raise ConnectionError("connection reset")
        return super().copy_in(source_bucket, source_name, source_generation, path, metadata)


def test_an_early_copy_that_failed_is_tried_again_once():
    store = FlakyCopies()
    store.add_source("inbox-bkt", "s/0.dcm", "1")
    staging = StagingCopies(store, "all", "b1")
    staging.start([member(0)])
    assert staging.finish([member(0)]) == []
    assert copies(store) == [layout.staging_path("all", "b1", member(0)["id"])]


def test_a_copy_failing_twice_propagates():
    store = FlakyCopies(always=True)
    store.add_source("inbox-bkt", "s/0.dcm", "1")
    staging = StagingCopies(store, "all", "b1")
    staging.start([member(0)])
    with pytest.raises(ConnectionError):
        staging.finish([member(0)])


class RefusingCopies(MemoryStateStore):
    """Cloud Storage refuses every copy of ``refused`` for good (as an object encrypted with a customer key)."""

    def __init__(self, refused: str) -> None:
        super().__init__()
        self.refused, self.attempts = refused, 0

    def copy_in(self, source_bucket, source_name, source_generation, path, metadata):
        if source_name == self.refused:
            self.attempts += 1
            raise SourceUnreadable(copy_refusal(400, [{"reason": "resourceIsEncryptedWithCustomerEncryptionKey"}]))
        return super().copy_in(source_bucket, source_name, source_generation, path, metadata)


def test_a_copy_refused_for_good_is_skipped_with_its_reason_not_retried_and_the_others_are_copied():
    store = RefusingCopies(refused="s/1.dcm")
    members = [member(n) for n in range(3)]
    for m in members:
        store.add_source(m["bucket"], m["name"], m["generation"])
    staging = StagingCopies(store, "all", "b1")
    staging.start(members)
    reason = "Cloud Storage refused to copy it: 400 resourceIsEncryptedWithCustomerEncryptionKey"
    assert staging.finish(members) == [{**members[1], "reason": reason}]
    assert store.attempts == 1
    assert sorted(copies(store)) == sorted(layout.staging_path("all", "b1", m["id"]) for m in (members[0], members[2]))


def test_the_driver_copies_members_while_the_window_is_open_and_once_each():
    world = World(quiet=0)  # sealed at the 10 s window
    objects = [world.upload(f"study/{n}.dcm") for n in range(2)]
    for obj in objects:
        world.admit(obj)
    (_, batch), = world.kicks
    fake_sleep = world.clock.sleep
    world.driver.sleep = lambda seconds: (fake_sleep(seconds), time.sleep(0.01))  # copies run during the window

    with pytest.raises(RetryLater):  # the operation is still running when this delivery's budget ends
        world.driver.drive("all", batch, Deadline(600))

    ops = world.store.ops
    seal_written = ops.index(("write", layout.seal_path("all", batch)))
    copied = [index for index, (op, _) in enumerate(ops) if op == "copy"]
    assert len(copied) == 2, "each member is copied once"
    assert max(copied) < seal_written, "copies started while the batch was open"
    assert world.api.imports == [(world.rule.store, f"gs://state-bkt/staging/all/{batch}/*")]
