"""The batching protocol (intake + driver) against in-memory collaborators.

Each test stages one situation of docs/design.md's failure table and checks
that no object is lost, nothing is imported twice because of a duplicate
event, and exactly one result message is published per import.
"""

import math
import threading
from typing import Any, Callable

import pytest

from handlers.batch import layout
from handlers.batch.layout import DONE, IMPORTING, LISTED, PUBLISHING
from handlers.config import parse
from handlers.batch.driver import ABANDONED_AFTER_SECONDS, Driver
from handlers.events import StorageObject
from handlers.clients.healthcare import ApiError
from handlers.clients.storage import SourceUnreadable, copy_refusal
from handlers.batch.intake import DUPLICATE, JOINED, OPENED, STALE_AFTER_SECONDS, Intake
from handlers.retry import Deadline, RetryLater
from tests.fakes import FakeApi, FakeClock, FakeLogging, FakePublisher, MemoryStateStore

STORE = "projects/p/locations/l/datasets/d/dicomStores/s"
CONFIG = f"""
stores: {{main: {STORE}}}
rules:
  - {{name: all, match: "gs://inbox-bkt/**.dcm", store: main}}
batching: {{max_objects: 3, max_wait_seconds: 10, seal_after_quiet_seconds: QUIET}}
state: {{bucket: state-bkt}}
results: {{topic: projects/p/topics/results, object_names: OBJECT_NAMES}}
followup: {{topic: projects/p/topics/followups, deadline_hours: 1}}
"""


class World:
    """One rule's intake and driver sharing a store, a clock, an API and a publisher."""

    def __init__(self, object_names: str = "plain", quiet: float = 2.0) -> None:
        text = CONFIG.replace("OBJECT_NAMES", object_names).replace("QUIET", str(quiet))
        self.config = parse(text, "config.yaml", {})
        self.rule = self.config.rules[0]
        self.clock = FakeClock()
        self.store = MemoryStateStore()
        self.api = FakeApi()
        self.publisher = FakePublisher()
        self.logging = FakeLogging()
        self.kicks: list[tuple[str, str]] = []
        self.intake = self.new_intake()
        self.driver = Driver(self.store, self.config, self.api, self.publisher, self.logging,
                             lambda r, b: self.kicks.append((r, b)), clock=self.clock, sleep=self.clock.sleep,
                             monotonic=self.clock)

    def new_intake(self) -> Intake:
        """A fresh instance (empty memory), as after a restart or on another instance."""
        return Intake(self.store, self.config, kick=lambda r, b: self.kicks.append((r, b)),
                      clock=self.clock, sleep=self.clock.sleep)

    def upload(self, name: str, generation: str = "1") -> StorageObject:
        self.store.add_source("inbox-bkt", name, generation)
        return StorageObject("inbox-bkt", name, generation, 4, f"event-{name}-{generation}")

    def admit(self, obj: StorageObject, intake: Intake | None = None) -> str:
        return (intake or self.intake).admit(obj, self.rule, Deadline(60))

    def drive(self, batch: str) -> str:
        return self.driver.drive("all", batch, Deadline(600))

    def results(self) -> list[dict]:
        return [data for _, data, _ in self.publisher.messages]


def finish_all(world: World, success_per_import=None, failure=0, error=None):
    for index, name in enumerate(list(world.api.operations)):
        success = success_per_import[index] if success_per_import else 1
        world.api.finish(name, success=success, failure=failure, error=error)


def test_lone_object_is_imported_after_the_window_and_reported_once():
    world = World(quiet=0)
    obj = world.upload("study/a.dcm")
    assert world.admit(obj) == OPENED
    assert len(world.kicks) == 1
    (_, batch), opened_at = world.kicks[0], world.clock.now

    with pytest.raises(RetryLater):  # operation still running at the end of this delivery's budget
        world.driver.drive("all", batch, Deadline(600))
    assert world.clock.now - opened_at == pytest.approx(10, abs=1.01)
    assert world.api.imports == [(STORE, f"gs://state-bkt/staging/all/{batch}/*")]

    finish_all(world)
    assert world.drive(batch) == DONE
    [message] = world.results()
    assert message["outcome"] == "SUCCEEDED"
    assert message["objects"] == [{"uri": "gs://inbox-bkt/study/a.dcm", "generation": "1"}]
    assert message["counter"] == {"success": 1, "failure": 0}
    assert world.publisher.messages[0][2]["outcome"] == "SUCCEEDED"
    assert not list(world.store.list("staging/")), "staging copies are removed once reported"

    assert world.drive(batch) == DONE
    assert len(world.publisher.messages) == 1, "a redelivered follow-up publishes nothing more"


def run_timeline(world: World, arrivals: list[float]) -> list[str]:
    """Objects joining at the given fake times while the drivers of the batches they open run.

    Intakes and drivers share the fake clock: each driver's sleep admits the objects
    due by then, as concurrent intakes would. Returns the batches, in opening order.
    """
    start = world.clock.now
    due = sorted((start + at, f"t/{index:03d}.dcm") for index, at in enumerate(arrivals))

    def admit_due() -> None:
        while due and due[0][0] <= world.clock.now:
            world.admit(world.upload(due.pop(0)[1]), world.new_intake())

    real_sleep = world.clock.sleep

    def sleep_and_admit(seconds: float) -> None:
        real_sleep(seconds)
        admit_due()

    world.driver.sleep = sleep_and_admit
    driven = 0
    while due or driven < len(world.kicks):
        admit_due()
        if driven < len(world.kicks):
            with pytest.raises(RetryLater, match="still running"):  # sealed, imported; the operation runs
                world.drive(world.kicks[driven][1])
            driven += 1
        elif due:
            world.clock.now = max(world.clock.now, due[0][0])
    world.driver.sleep = real_sleep
    return [batch for _, batch in world.kicks]


def sealed_because(world: World, batch: str) -> str:
    return world.store.doc(layout.record_path("all", batch))["sealedBecause"]


def test_a_lone_object_is_sealed_once_the_batch_is_quiet_not_at_the_window():
    world = World(quiet=2.0)
    opened = world.clock.now
    [batch] = run_timeline(world, [0.0])
    record = world.store.doc(layout.record_path("all", batch))
    assert record["sealedBecause"] == "quiet"
    assert 2.0 <= record["sealedAt"] - opened <= 2.0 + 0.5 + 0.01, "quiet time plus at most one listing interval"
    assert len(world.api.imports) == 1


def test_objects_closer_together_than_the_quiet_time_stay_in_one_batch():
    world = World(quiet=2.0)
    opened = world.clock.now
    [batch] = run_timeline(world, [0.0, 1.9])
    record = world.store.doc(layout.record_path("all", batch))
    assert record["sealedBecause"] == "quiet" and len(record["members"]) == 2
    assert record["sealedAt"] - opened >= 1.9 + 2.0


def test_a_gap_longer_than_the_quiet_time_seals_the_batch_and_the_next_object_opens_another():
    world = World(quiet=2.0)
    first, second = run_timeline(world, [0.0, 1.0, 4.0])
    assert sealed_because(world, first) == "quiet" and sealed_because(world, second) == "quiet"
    assert [len(world.store.doc(layout.record_path("all", b))["members"]) for b in (first, second)] == [2, 1]


def test_quiet_off_waits_for_the_window():
    world = World(quiet=0)
    opened = world.clock.now
    [batch] = run_timeline(world, [0.0, 1.0])
    record = world.store.doc(layout.record_path("all", batch))
    assert record["sealedBecause"] == "window" and record["sealedAt"] - opened == pytest.approx(10, abs=1.01)


def test_a_full_batch_is_sealed_at_max_objects_before_it_is_quiet():
    world = World(quiet=2.0)
    first, second = run_timeline(world, [0.0, 0.1, 0.2, 1.0])
    assert sealed_because(world, first) == "full" and sealed_because(world, second) == "quiet"


@pytest.mark.parametrize("seed", range(20))
def test_call_bound_for_a_burst_whose_gaps_are_all_shorter_than_the_quiet_time(seed):
    """docs/design.md, "Bounds": N objects, no gap of the quiet time or more, within one window."""
    import random

    rng = random.Random(seed)
    world = World(quiet=2.0)
    count = rng.randint(1, 12)
    arrivals, at = [], 0.0
    for _ in range(count):
        arrivals.append(at)
        at += rng.uniform(0.0, 1.99) * rng.choice((0.05, 1.0))
    assert arrivals[-1] < 10, "the burst fits in one max_wait_seconds window"
    run_timeline(world, arrivals)
    assert len(world.api.imports) <= math.ceil(count / 3) + 1, (arrivals, world.kicks)
    members = [m for _, b in world.kicks for m in world.store.doc(layout.record_path("all", b)).get("members", [])]
    assert sorted(m["name"] for m in members) == [f"t/{i:03d}.dcm" for i in range(count)], "each object once"


def test_a_resumed_driver_measures_the_quiet_time_afresh():
    world = World(quiet=2.0)
    world.admit(world.upload("a.dcm"))
    batch = world.kicks[0][1]
    with pytest.raises(RetryLater, match="window still open"):
        Driver(world.store, world.config, world.api, world.publisher, world.logging, clock=world.clock,
               sleep=world.clock.sleep, monotonic=world.clock).drive("all", batch, Deadline(0.3))
    assert not world.store.docs.get(layout.record_path("all", batch)), "not sealed by a delivery that saw no quiet"
    world.clock.now += 3.0  # redelivered later: the object joined 3 s ago, but no listing of this delivery saw quiet
    resumed_at = world.clock.now
    with pytest.raises(RetryLater, match="still running"):
        world.drive(batch)
    assert world.store.doc(layout.record_path("all", batch))["sealedAt"] - resumed_at >= 2.0


def test_objects_join_the_open_batch_and_a_full_batch_seals_early():
    world = World()
    objs = [world.upload(f"s/{i}.dcm") for i in range(3)]
    assert [world.admit(o) for o in objs] == [OPENED, JOINED, JOINED]
    batch = world.kicks[0][1]
    start = world.clock.now
    with pytest.raises(RetryLater):
        world.drive(batch)
    assert world.clock.now == start, "max_objects reached: sealed without waiting for the window"
    record = world.store.doc(layout.record_path("all", batch))
    assert {m["name"] for m in record["members"]} == {"s/0.dcm", "s/1.dcm", "s/2.dcm"}

    late = world.upload("s/3.dcm")
    assert world.admit(late) == OPENED, "the next object opens the next batch"
    assert len(world.kicks) == 2 and world.kicks[1][1] != batch


def test_duplicate_event_while_open_and_after_done_changes_nothing():
    world = World()
    obj = world.upload("a.dcm")
    world.admit(obj)
    copies = len([op for op in world.store.ops if op[0] == "copy"])
    assert world.admit(obj, world.new_intake()) == DUPLICATE
    batch = world.kicks[0][1]
    with pytest.raises(RetryLater):
        world.drive(batch)
    finish_all(world)
    world.drive(batch)

    assert world.admit(obj, world.new_intake()) == DUPLICATE
    assert world.admit(obj, world.new_intake()) == DUPLICATE
    assert len(world.api.imports) == 1
    assert len(world.publisher.messages) == 1
    assert len(world.kicks) == 1, "no batch was opened for the duplicates"
    assert len([op for op in world.store.ops if op[0] == "copy"]) == copies + 1


def test_a_new_generation_of_the_same_name_is_a_new_object():
    world = World()
    world.admit(world.upload("a.dcm", "1"))
    assert world.admit(world.upload("a.dcm", "2")) == JOINED


def test_marker_written_just_before_the_seal_stays_in_the_sealed_batch():
    world = World()
    world.admit(world.upload("a.dcm"))
    batch = world.kicks[0][1]
    world.clock.now += 11  # window over

    def seal_after_this_marker(path):
        world.store.after_marker = None
        with pytest.raises(RetryLater):
            world.drive(batch)  # seals and lists: the marker has landed, so it is listed

    world.store.after_marker = seal_after_this_marker
    verdict = world.admit(world.upload("b.dcm"))
    record = world.store.doc(layout.record_path("all", batch))
    assert {m["name"] for m in record["members"]} == {"a.dcm", "b.dcm"}
    assert verdict == JOINED
    assert len(world.kicks) == 1


def test_marker_landing_after_the_listing_joins_the_next_batch_and_is_never_imported_twice():
    world = World()
    first = world.upload("a.dcm")
    world.admit(first)
    batch = world.kicks[0][1]
    world.clock.now += 11

    real_marker = world.store.write_marker
    sealed = []

    def marker_after_seal(*args, **kwargs):
        if not sealed:
            sealed.append(True)
            with pytest.raises(RetryLater):
                world.drive(batch)  # sealed, listed, staged and import called just before this marker lands
        return real_marker(*args, **kwargs)

    world.store.write_marker = marker_after_seal
    late = world.upload("late.dcm")
    verdict = world.admit(late)
    world.store.write_marker = real_marker

    record = world.store.doc(layout.record_path("all", batch))
    assert {m["name"] for m in record["members"]} == {"a.dcm"}
    staged = {name.rsplit("/", 1)[-1] for name, _ in world.store.blobs.items()
              if name.startswith(layout.staging_prefix("all", batch))}
    assert staged == {layout.object_id(first) + ".dcm"}, "the imported folder holds exactly the listed members"
    assert verdict == OPENED, "joined a new batch it opened"
    new_batch = world.kicks[-1][1]
    assert new_batch != batch
    claim = layout.claim_path("all", layout.object_id(late))
    assert world.store.doc(claim)["batch"] == new_batch
    assert ("read", claim) not in world.store.ops, "its own claim is moved to the next batch without reading it back"
    finish_all(world)
    assert world.drive(batch) == DONE
    assert not [name for name in world.store.blobs if name.startswith(layout.member_prefix("all", batch))]


def staged(world: World, batch: str) -> set[str]:
    """The ids of the copies in the batch's staging folder (the import reads its ``*``)."""
    prefix = layout.staging_prefix("all", batch)
    return {name[len(prefix):].removesuffix(".dcm") for name in world.store.blobs if name.startswith(prefix)}


def write_late_marker(world: World, batch: str, obj: StorageObject) -> None:
    """An intake that read the batch open before its seal writes its marker now."""
    world.store.write_marker(layout.member_path("all", batch, layout.object_id(obj)), layout.source_metadata(obj))


def race(world: World, batch: str, late: StorageObject, method: str, when: Callable[[str], bool], *,
         answer_none: bool = False) -> list[bool]:
    """Drive ``batch`` while another delivery of its driver runs to its import inside the first call of
    ``world.store.<method>`` that ``when`` accepts, and ``late``'s marker lands right after that one; that
    call then answers None (``answer_none``: what it read before the other delivery wrote) or as usual.
    Returns ``[True]`` once the race happened."""
    real = getattr(world.store, method)
    raced: list[bool] = []

    def racing(argument: str) -> Any:
        if when(argument) and not raced:
            raced.append(True)
            with pytest.raises(RetryLater):
                world.drive(batch)
            write_late_marker(world, batch, late)
            if answer_none:
                return None
        return real(argument)

    setattr(world.store, method, racing)
    try:
        with pytest.raises(RetryLater):
            world.drive(batch)
    finally:
        setattr(world.store, method, real)
    return raced


def assert_only_the_first_is_member_staged_and_imported(world: World, batch: str, first: StorageObject) -> None:
    record = world.store.doc(layout.record_path("all", batch))
    assert [m["name"] for m in record["members"]] == [first.name] and len(world.api.imports) == 1
    assert staged(world, batch) == {layout.object_id(first)}, "only members are ever copied into the folder"


def test_a_second_delivery_that_finds_the_seal_copies_nothing_before_its_listing_is_the_record():
    """Two deliveries of one driver message: the one that loses the record's creation listed a marker that landed
    after the winner's listing; had it copied it, the winner's import of the folder would import a non-member."""
    world = World()
    first = world.upload("a.dcm")
    world.admit(first)
    batch = world.kicks[0][1]
    world.clock.now += 11
    # this delivery reads no record; meanwhile the other one seals, lists, imports
    assert race(world, batch, world.upload("late.dcm"), "read", lambda path: path == layout.record_path("all", batch),
                answer_none=True)
    assert_only_the_first_is_member_staged_and_imported(world, batch, first)


def test_a_delivery_whose_window_listing_follows_another_deliverys_seal_copies_nothing_of_it():
    world = World(quiet=0)  # sealed at the 10 s window
    first = world.upload("a.dcm")
    world.admit(first)
    batch = world.kicks[0][1]
    # while this delivery lists in its window, the other one seals, lists and imports
    assert race(world, batch, world.upload("late.dcm"), "list",
                lambda prefix: prefix == layout.member_prefix("all", batch))
    assert_only_the_first_is_member_staged_and_imported(world, batch, first)


def test_the_sealer_copies_no_marker_that_only_its_losing_listing_shows():
    """Even the delivery that created the seal: another delivery that found the seal may list first and win the
    record; a marker landing between the two listings is in the sealer's listing and not a member."""
    world = World()
    first = world.upload("a.dcm")
    world.admit(first)
    batch = world.kicks[0][1]
    world.clock.now += 11
    late = world.upload("late.dcm")
    # once sealed, the other delivery found the seal, listed [a], won the record and imported
    assert race(world, batch, late, "list", lambda prefix: prefix == layout.member_prefix("all", batch)
                and layout.seal_path("all", batch) in world.store.docs)
    assert_only_the_first_is_member_staged_and_imported(world, batch, first)
    assert world.admit(late) == OPENED, "its intake sees the record without it and takes it to the next batch"


def test_copies_of_non_members_are_deleted_from_the_staging_folder_before_the_import():
    """A copy an earlier delivery made of a member whose generation is gone since (skipped), or one a previous
    version's losing delivery made of a non-member: the folder the import reads holds exactly the members."""
    world = World()
    kept, gone = world.upload("kept.dcm"), world.upload("gone.dcm")
    world.admit(kept)
    world.admit(gone)
    batch = world.kicks[0][1]
    world.clock.now += 11
    stray = world.upload("stray.dcm")
    for obj in (gone, stray):
        world.store.copy_in(obj.bucket, obj.name, obj.generation, layout.staging_path("all", batch, layout.object_id(obj)), {})
    del world.store.sources[("inbox-bkt", "gone.dcm", "1")]
    real_import = world.api.import_dicom
    at_import = []

    def import_dicom(*args, **kwargs):
        at_import.append(staged(world, batch))
        return real_import(*args, **kwargs)

    world.api.import_dicom = import_dicom
    with pytest.raises(RetryLater):
        world.drive(batch)
    assert at_import == [{layout.object_id(kept)}]
    finish_all(world)
    world.drive(batch)
    [message] = world.results()
    assert [o["uri"] for o in message["objects"]] == ["gs://inbox-bkt/kept.dcm"]
    assert [s["uri"] for s in message["skipped"]] == ["gs://inbox-bkt/gone.dcm"]


def test_intakes_waiting_for_a_sealed_batchs_listing_share_their_reads_of_its_record():
    """Dozens of admissions in flight meet a full batch's seal at once: one instance must not poll its record dozens of times."""
    world = World()
    world.admit(world.upload("a.dcm"))
    batch = world.kicks[0][1]
    world.clock.now += 11
    world.store.create(layout.seal_path("all", batch), {"batch": batch, "rule": "all"})  # sealed, not listed yet
    path = layout.record_path("all", batch)
    first_read_may_end = threading.Event()
    record_reads = []
    real_read = world.store.read

    def read(name):
        if name == path:
            record_reads.append(name)
            if len(record_reads) == 1:
                assert first_read_may_end.wait(5)
        return real_read(name)

    world.store.read = read
    objects = [world.upload(f"{letter}.dcm") for letter in "bcde"]
    answers: dict[str, bool] = {}

    def confirm(obj):
        answers[obj.name] = world.intake._join_and_confirm(obj, world.rule, layout.object_id(obj), batch, Deadline(10))

    waiting = [threading.Thread(target=confirm, args=(obj,)) for obj in objects]
    for thread in waiting:
        thread.start()
    threading.Event().wait(0.3)  # every intake has written its marker and is waiting for the listing
    members = [{"id": layout.object_id(obj), "bucket": "inbox-bkt", "name": obj.name, "generation": "1"}
               for obj in objects[:1]]
    world.store.create(path, {"batch": batch, "rule": "all", "state": IMPORTING, "members": members})
    first_read_may_end.set()
    for thread in waiting:
        thread.join(10)
    assert answers == {"b.dcm": True, "c.dcm": False, "d.dcm": False, "e.dcm": False}
    assert len(record_reads) <= 3, f"{len(record_reads)} reads of the record for 4 waiting intakes"


def test_opener_that_died_before_publishing_the_driver_publishes_it_on_redelivery():
    world = World()
    obj = world.upload("a.dcm")
    broken = Intake(world.store, world.config, kick=lambda r, b: (_ for _ in ()).throw(TimeoutError("pubsub down")),
                    clock=world.clock, sleep=world.clock.sleep)
    with pytest.raises(TimeoutError):
        world.admit(obj, broken)
    assert world.kicks == []
    assert world.admit(obj, world.new_intake()) == OPENED
    assert len(world.kicks) == 1


def test_a_stale_open_lease_gets_its_driver_published_again_by_any_object():
    world = World()
    world.admit(world.upload("a.dcm"))
    world.clock.now += 10 + STALE_AFTER_SECONDS + 1
    assert world.admit(world.upload("b.dcm"), world.new_intake()) == JOINED
    assert len(world.kicks) == 2 and world.kicks[0] == world.kicks[1]


def test_a_done_batch_whose_seal_the_lifecycle_deleted_first_takes_no_new_member():
    """The state bucket's lifecycle deletes an idle rule's seal, lease and record after 30 days, in no set order:
    with the seal gone first, the next object joined the done batch, whose driver then deleted its marker."""
    world = World()
    world.admit(world.upload("a.dcm"))
    batch = world.kicks[0][1]
    with pytest.raises(RetryLater):
        world.drive(batch)
    finish_all(world)
    assert world.drive(batch) == DONE
    world.clock.now += 30 * 86400
    world.store.delete(layout.seal_path("all", batch))

    late = world.upload("b.dcm")
    assert world.admit(late, world.new_intake()) == OPENED
    next_batch = world.kicks[-1][1]
    assert next_batch != batch
    assert world.store.doc(layout.claim_path("all", layout.object_id(late)))["batch"] == next_batch
    with pytest.raises(RetryLater):
        world.drive(next_batch)
    finish_all(world)
    assert world.drive(next_batch) == DONE
    assert [message["objects"] for message in world.results()] == [
        [{"uri": "gs://inbox-bkt/a.dcm", "generation": "1"}], [{"uri": "gs://inbox-bkt/b.dcm", "generation": "1"}]]


def test_a_stale_lease_whose_seal_and_record_are_both_gone_takes_the_new_object_and_imports_it():
    world = World()
    world.admit(world.upload("a.dcm"))
    batch = world.kicks[0][1]
    with pytest.raises(RetryLater):
        world.drive(batch)
    finish_all(world)
    world.drive(batch)
    world.clock.now += 30 * 86400
    world.store.delete(layout.seal_path("all", batch))
    world.store.delete(layout.record_path("all", batch))

    assert world.admit(world.upload("b.dcm"), world.new_intake()) == JOINED
    assert world.kicks[-1] == ("all", batch), "its driver is published again"
    with pytest.raises(RetryLater):
        world.drive(batch)
    finish_all(world)
    assert world.drive(batch) == DONE
    assert world.results()[-1]["objects"] == [{"uri": "gs://inbox-bkt/b.dcm", "generation": "1"}]


def test_generation_deleted_before_the_import_is_skipped_and_reported():
    world = World()
    world.admit(world.upload("kept.dcm"))
    gone = StorageObject("inbox-bkt", "gone.dcm", "7", 4, "e")  # its generation no longer exists
    assert world.admit(gone) == JOINED
    batch = world.kicks[0][1]
    with pytest.raises(RetryLater):
        world.drive(batch)
    finish_all(world)
    world.drive(batch)
    [message] = world.results()
    assert message["objects"] == [{"uri": "gs://inbox-bkt/kept.dcm", "generation": "1"}]
    assert message["skipped"] == [{"uri": "gs://inbox-bkt/gone.dcm", "generation": "7",
                                   "reason": "generation deleted or overwritten before import"}]
    assert message["objectCount"] == 1


def test_a_member_cloud_storage_refuses_to_copy_is_skipped_and_the_rest_of_its_batch_imported():
    """An object encrypted with a customer-supplied key (400), a disabled KMS key or no read grant (403): before,
    every delivery failed after the seal and before the record, until the follow-up was dead-lettered, and the
    other members (their claims saying covered) were never imported."""
    world = World(object_names="hashed")
    world.admit(world.upload("DOE_JOHN/ok.dcm"))
    world.admit(world.upload("DOE_JOHN/csek.dcm"))
    batch = world.kicks[0][1]
    real_copy_in = world.store.copy_in

    def copy_in(bucket, name, generation, path, metadata):
        if name == "DOE_JOHN/csek.dcm":
            raise SourceUnreadable(copy_refusal(400, [{"reason": "resourceIsEncryptedWithCustomerEncryptionKey",
                                                       "message": "gs://inbox-bkt/DOE_JOHN/csek.dcm is encrypted"}]))
        return real_copy_in(bucket, name, generation, path, metadata)

    world.store.copy_in = copy_in
    with pytest.raises(RetryLater):
        world.drive(batch)
    finish_all(world)
    assert world.drive(batch) == DONE
    assert len(world.api.imports) == 1
    [message] = world.results()
    assert message["objectCount"] == 1 and len(message["objects"]) == 1
    [skipped] = message["skipped"]
    assert skipped["uri"].startswith("sha256:")
    assert skipped["reason"] == "Cloud Storage refused to copy it: 400 resourceIsEncryptedWithCustomerEncryptionKey"
    assert "DOE" not in repr(message)


def test_the_message_lists_the_first_skipped_objects_and_counts_them_all(monkeypatch):
    monkeypatch.setattr("handlers.batch.results.MAX_LISTED_SKIPPED", 2)
    world = World()
    world.admit(world.upload("kept.dcm"))
    for generation in ("7", "8", "9"):  # generations that no longer exist
        world.admit(StorageObject("inbox-bkt", f"gone-{generation}.dcm", generation, 4, "e"))
    batch = world.kicks[0][1]
    with pytest.raises(RetryLater):
        world.drive(batch)
    finish_all(world)
    world.drive(batch)
    [message] = world.results()  # every published message is validated against the schema
    assert len(message["skipped"]) == 2 and message["skippedCount"] == 3
    record = world.store.doc(layout.record_path("all", batch))
    assert message["manifest"] == f"gs://state-bkt/{layout.record_path('all', batch)}" and len(record["skipped"]) == 3


def test_batch_whose_every_generation_is_gone_imports_nothing():
    world = World()
    world.admit(StorageObject("inbox-bkt", "gone.dcm", "7", 4, "e"))
    assert world.drive(world.kicks[0][1]) == DONE
    assert world.api.imports == [] and world.publisher.messages == []


def test_driver_resumes_after_dying_between_seal_and_listing():
    world = World()
    world.admit(world.upload("a.dcm"))
    batch = world.kicks[0][1]
    world.clock.now += 11
    seal = {"batch": batch, "rule": "all", "store": STORE, "blobStorageClass": None,
            "openedAt": world.clock.now - 11, "sealedAt": world.clock.now, "sealedBy": "dead", "sealedBecause": "window"}
    world.store.create(layout.seal_path("all", batch), seal)  # the sealer died before listing
    lease_generation = world.store.docs[layout.lease_path("all")][1]
    late = world.upload("late.dcm")
    assert world.admit(late, world.new_intake()) == OPENED, "a sealed batch takes no new member"
    with pytest.raises(RetryLater):
        world.drive(batch)
    record = world.store.doc(layout.record_path("all", batch))
    assert record["state"] == IMPORTING and [m["name"] for m in record["members"]] == ["a.dcm"]
    assert record["store"] == STORE and record["sealedBy"] == "dead"
    assert world.store.docs[layout.lease_path("all")][1] != lease_generation, "only the next batch's opening wrote it"


def test_the_lease_is_written_once_per_batch_and_never_by_the_driver():
    """Cloud Storage takes about one write per second per object name: the lease is the name every batch rewrites."""
    world = World(quiet=2.0)
    batches = run_timeline(world, [0.0, 0.1, 0.2, 1.0, 1.1, 5.0, 9.0, 9.5])
    lease_writes = [op for op in world.store.ops if op == ("write", layout.lease_path("all"))]
    assert len(batches) == 4 and len(lease_writes) == len(batches)
    for batch in batches:
        record_writes = [op for op in world.store.ops if op == ("write", layout.record_path("all", batch))]
        assert record_writes[0] == ("write", layout.record_path("all", batch))
        assert world.store.doc(layout.seal_path("all", batch))["batch"] == batch


def test_a_record_left_sealing_by_an_older_version_is_sealed_then_listed():
    world = World()
    world.admit(world.upload("a.dcm"))
    batch = world.kicks[0][1]
    world.clock.now += 11
    sealing = {"batch": batch, "rule": "all", "store": STORE, "blobStorageClass": None,
               "openedAt": world.clock.now - 11, "state": "sealing", "sealedAt": world.clock.now, "sealedBy": "old"}
    world.store.create(layout.record_path("all", batch), sealing)
    with pytest.raises(RetryLater):
        world.drive(batch)
    assert world.store.doc(layout.record_path("all", batch))["state"] == IMPORTING
    assert world.store.doc(layout.seal_path("all", batch))["sealedBy"] == "old", "intakes now see it sealed"
    assert world.admit(world.upload("b.dcm"), world.new_intake()) == OPENED


def test_import_claimed_by_a_dead_worker_is_started_again_after_a_while():
    world = World()
    world.admit(world.upload("a.dcm"))
    batch = world.kicks[0][1]
    world.clock.now += 11
    world.api.import_errors = [ApiError(503, "UNAVAILABLE", "down")]
    with pytest.raises(RetryLater):
        Driver(world.store, world.config, world.api, world.publisher, world.logging, clock=world.clock,
               sleep=world.clock.sleep).drive("all", batch, Deadline(60))  # the 503 ends it, not the budget
    path = layout.record_path("all", batch)
    assert world.store.doc(path)["state"] == LISTED, "a refused call reverts to listed"

    doc = world.store.doc(path)
    world.store.replace(path, {**doc, "state": IMPORTING, "operation": None, "importStartedAt": world.clock.now},
                        world.store.docs[path][1])
    with pytest.raises(RetryLater, match="another worker"):
        world.drive(batch)
    world.clock.now += ABANDONED_AFTER_SECONDS + 1
    with pytest.raises(RetryLater, match="still running"):
        world.drive(batch)
    assert len(world.api.imports) == 1


def test_rejected_import_is_reported_with_a_hint_and_not_retried():
    world = World()
    world.admit(world.upload("a.dcm"))
    world.admit(world.upload("b.dcm"))
    batch = world.kicks[0][1]
    world.clock.now += 11
    world.api.import_errors = [ApiError(403, "PERMISSION_DENIED", "caller lacks healthcare.dicomStores.import")]
    assert world.drive(batch) == DONE
    [(topic, message, attributes)] = world.publisher.messages
    assert topic == "projects/p/topics/results"
    assert message["outcome"] == "REJECTED" and attributes["outcome"] == "REJECTED"
    assert message["counter"]["failure"] == 2 and attributes["failureCount"] == "2"
    assert "service-PROJECT_NUMBER@gcp-sa-healthcare.iam.gserviceaccount.com" in message["hint"]
    assert "roles/storage.objectViewer" in message["hint"]
    assert message["error"]["code"] == 403
    assert world.api.imports == []


@pytest.mark.parametrize(
    "success, failure, error, outcome",
    [
        (3, 0, None, "SUCCEEDED"),
        (2, 1, None, "PARTIAL"),
        (2, 1, {"code": 3, "message": "1 file failed"}, "PARTIAL"),
        (0, 3, {"code": 3, "message": "all failed"}, "FAILED"),
        (0, 3, None, "FAILED"),
        (1, 0, {"code": 1, "message": "cancelled"}, "FAILED"),
    ],
)
def test_outcome_from_either_style_of_finished_operation(success, failure, error, outcome):
    world = World()
    world.admit(world.upload("a.dcm"))
    batch = world.kicks[0][1]
    with pytest.raises(RetryLater):
        world.drive(batch)
    finish_all(world, [success], failure=failure, error=error)
    world.drive(batch)
    [(_, message, attributes)] = world.publisher.messages
    assert message["outcome"] == outcome
    assert message["counter"] == {"success": success, "failure": failure}
    assert attributes["failureCount"] == str(failure)
    assert (message["error"] or None) == error


def test_publish_failure_is_retried_by_the_next_delivery_and_published_once():
    world = World()
    world.admit(world.upload("a.dcm"))
    batch = world.kicks[0][1]
    with pytest.raises(RetryLater):
        world.drive(batch)
    finish_all(world)
    world.publisher.failures = 1
    with pytest.raises(RetryLater, match="results topic unavailable"):
        world.drive(batch)
    assert world.store.doc(layout.record_path("all", batch))["state"] == PUBLISHING
    assert world.drive(batch) == DONE
    assert len(world.publisher.messages) == 1


def test_operation_followed_past_the_deadline_is_reported_unknown():
    world = World()
    world.admit(world.upload("a.dcm"))
    batch = world.kicks[0][1]
    with pytest.raises(RetryLater):
        world.drive(batch)
    world.clock.now += 3601
    assert world.drive(batch) == DONE
    [(_, message, attributes)] = world.publisher.messages
    assert message["outcome"] == "UNKNOWN" and message["error"]["status"] == "DEADLINE_EXCEEDED"
    assert message["hint"].endswith(f"`python -m handlers retry {batch}` re-imports them (files already stored are unchanged)")


def test_follow_up_for_a_batch_that_never_opened_is_dropped():
    world = World()
    assert world.drive("20260101T000000Z-deadbeef") == "missing"
    assert world.api.imports == [] and world.publisher.messages == []


def test_hashed_names_never_reach_the_message():
    world = World(object_names="hashed")
    world.admit(world.upload("PATIENT_DOE_JOHN/a.dcm"))
    batch = world.kicks[0][1]
    with pytest.raises(RetryLater):
        world.drive(batch)
    finish_all(world)
    world.drive(batch)
    [(_, message, attributes)] = world.publisher.messages
    assert "DOE" not in repr(message) and "DOE" not in repr(attributes)
    assert message["objects"][0]["uri"].startswith("sha256:")
    assert message["objectNames"] == "hashed"


def test_long_batches_link_the_manifest_instead_of_listing_names(monkeypatch):
    monkeypatch.setattr("handlers.batch.results.MAX_LISTED_OBJECTS", 2)
    world = World()
    for i in range(3):
        world.admit(world.upload(f"{i}.dcm"))
    batch = world.kicks[0][1]
    with pytest.raises(RetryLater):
        world.drive(batch)
    finish_all(world, [3])
    world.drive(batch)
    [(_, message, _)] = world.publisher.messages
    assert message["objects"] is None and message["objectCount"] == 3
    assert message["manifest"] == f"gs://state-bkt/batches/all/{batch}.json"


def test_two_deliveries_of_a_batch_in_one_process_publish_its_result_once():
    world = World()
    world.admit(world.upload("a.dcm"))
    batch = world.kicks[0][1]
    with pytest.raises(RetryLater):
        world.drive(batch)
    finish_all(world)
    real_publish = world.publisher.publish
    overlapping = []

    def publish_while_another_delivery_runs(*args, **kwargs):
        if not overlapping:
            with pytest.raises(RetryLater, match="another worker is publishing") as caught:
                world.drive(batch)  # Pub/Sub redelivered the follow-up to the same instance
            overlapping.append(caught.value)
        return real_publish(*args, **kwargs)

    world.publisher.publish = publish_while_another_delivery_runs
    assert world.drive(batch) == DONE
    assert overlapping and len(world.publisher.messages) == 1


def test_the_record_is_created_with_its_import_claim_and_next_written_with_the_outcome():
    """Cloud Storage takes one write per second per name: between the claim and the outcome the record is not written."""
    world = World(quiet=0)
    world.admit(world.upload("study/a.dcm"))
    (_, batch), = world.kicks
    path = layout.record_path("all", batch)
    with pytest.raises(RetryLater, match="still running"):
        world.driver.drive("all", batch, Deadline(15))
    record = world.store.doc(path)
    assert record["state"] == IMPORTING and record["operation"] is None and record["importBy"]
    [(_, uri)] = world.api.imports
    assert uri == record["importUri"], "the import was called under the claim the record was created with"
    note = world.store.doc(layout.operation_path("all", batch, record["importBy"]))
    [operation] = world.api.operations
    assert note["operation"] == operation, "the operation is noted beside the record"

    finish_all(world)
    assert world.drive(batch) == DONE
    record_writes = [op for op in world.store.ops if op == ("write", path)]
    assert len(record_writes) == 3, "created importing (claimed), publishing, done"
    [message] = world.results()
    assert message["outcome"] == "SUCCEEDED"
    assert world.store.read(path).data["operation"] == message["operation"] == operation
    assert not list(world.store.list(layout.operation_prefix("all", batch))), "notes go with the staging copies"


def test_a_batch_sealed_with_many_copies_left_records_its_listing_before_copying(monkeypatch):
    """Intakes whose marker met the seal wait for the listing: it must not wait for a long tail of copies."""
    monkeypatch.setattr("handlers.batch.driver.COPY_THREADS", 0)  # any copy left counts as many
    world = World()
    world.admit(world.upload("a.dcm"))
    batch = world.kicks[0][1]
    world.clock.now += 11
    copies_may_end = threading.Event()
    real_copy_in = world.store.copy_in

    def slow_copy_in(*args, **kwargs):
        assert copies_may_end.wait(5)
        return real_copy_in(*args, **kwargs)

    world.store.copy_in = slow_copy_in
    path = layout.record_path("all", batch)
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            world.driver.drive("all", batch, Deadline(15))
        except RetryLater as exc:
            errors.append(exc)

    delivery = threading.Thread(target=drive)
    delivery.start()
    try:
        for _ in range(500):
            if world.store.read(path) is not None:
                break
            threading.Event().wait(0.01)
        record = world.store.doc(path)
        assert record["state"] == LISTED and [m["name"] for m in record["members"]] == ["a.dcm"]
        assert not world.api.imports, "no import before its copies are made"
    finally:
        copies_may_end.set()
        delivery.join(10)
    assert world.store.doc(path)["state"] == IMPORTING and len(world.api.imports) == 1
    assert errors and "still running" in str(errors[0])


def test_a_worker_dying_after_the_import_call_leaves_its_operation_for_the_next_delivery_without_a_wait():
    world = World()
    world.admit(world.upload("a.dcm"))
    batch = world.kicks[0][1]
    world.clock.now += 11
    real_wait = world.api.wait

    def instance_dies(*args, **kwargs):
        raise SystemExit("instance killed while following the operation")

    world.api.wait = instance_dies
    with pytest.raises(SystemExit):
        world.drive(batch)
    world.api.wait = real_wait
    assert world.store.doc(layout.record_path("all", batch))["operation"] is None, "the dead worker wrote no name"
    finish_all(world)
    assert world.drive(batch) == DONE, "the next delivery follows the noted operation at once, not after 120 s"
    assert len(world.api.imports) == 1 and len(world.results()) == 1
