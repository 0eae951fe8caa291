"""The reconcile sweep (handlers/reconcile) against in-memory collaborators: what it admits, what it
recognises as covered, what it reads, how it resumes, and its one message per sweep."""

from __future__ import annotations

import json

import pytest

from handlers.batch import layout
from handlers.batch.driver import Driver
from handlers.batch.intake import Intake
from handlers.batch.layout import DONE, LISTED
from handlers.batch.reporting import Reporter
from handlers.config import MAX_RECONCILE_WINDOW_HOURS, parse
from handlers.events import StorageObject
from handlers.reconcile import progress as progress_module
from handlers.reconcile import sweep as sweep_module
from handlers.reconcile.progress import CHECKPOINT_PATH, SWEEP_PATH, Progress, SweepBusy, UnfinishedSweep
from handlers.reconcile.sweep import Sweeper
from handlers.retry import Deadline, RetryLater
from tests.fakes import FakeApi, FakeClock, FakePublisher, MemorySource, MemoryStateStore
from tests.message_schemas import validate

STORE = "projects/p/locations/l/datasets/d/dicomStores/s"
CONFIG = f"""
stores: {{main: {STORE}}}
rules:
  - {{name: ct, match: "gs://inbox-bkt/ct/**.dcm", store: main}}
  - {{name: all, match: "gs://inbox-bkt/**.dcm", store: main, ignore: ["gs://inbox-bkt/*/draft-*.dcm"]}}
batching: {{max_objects: 500, max_wait_seconds: 10, seal_after_quiet_seconds: 2}}
state: {{bucket: state-bkt}}
results: {{topic: projects/p/topics/results, object_names: NAMES}}
followup: {{topic: projects/p/topics/followups}}
reconcile: {{overlap_minutes: 10, settle_seconds: 120, first_window_hours: 24}}
"""
HOUR = 3600.0
DAY = 24 * HOUR


class World:
    """A watched bucket, the state bucket, the intake and driver, and a sweeper, on one fake clock."""

    def __init__(self, names: str = "plain") -> None:
        self.config = parse(CONFIG.replace("NAMES", names), "config.yaml", {})
        self.clock = FakeClock()
        self.store = MemoryStateStore(clock=self.clock)
        self.source = MemorySource(self.store)
        self.api = FakeApi()
        self.publisher = FakePublisher()
        self.kicks: list[tuple[str, str]] = []
        self.intake = Intake(self.store, self.config, kick=lambda r, b: self.kicks.append((r, b)), clock=self.clock,
                             sleep=self.clock.sleep)
        self.driver = Driver(self.store, self.config, self.api, self.publisher, clock=self.clock,
                             sleep=self.clock.sleep, monotonic=self.clock)

    def sweeper(self) -> Sweeper:
        """A sweeper as a fresh instance would build it (its own worker identity)."""
        reporter = Reporter(self.store, self.publisher, self.config.results_topic, self.clock)
        return Sweeper(self.store, self.source, self.config, self.intake, reporter, clock=self.clock)

    def put(self, name: str, age: float, generation: str = "1") -> StorageObject:
        """An object created ``age`` seconds ago."""
        self.source.add("inbox-bkt", name, generation, self.clock.now - age)
        return StorageObject("inbox-bkt", name, generation, None, f"event-{name}")

    def event(self, obj: StorageObject, rule: str) -> str:
        """The object's event, delivered."""
        return self.intake.admit(obj, self.config.rule_named(rule), Deadline(60))

    def sweep(self, **kwargs) -> dict:
        return self.sweeper().run(Deadline(3600), **kwargs)

    def reconcile_messages(self) -> list[dict]:
        return [data for _, data, _ in self.publisher.messages if data["schema"] == "dicom-reconcile-result/v1"]

    def claim_reads(self) -> list[str]:
        return [path for op, path in self.store.ops if op == "read" and path.startswith("claims/")]

    def drive_all(self) -> None:
        for rule, batch in dict.fromkeys(self.kicks):
            with pytest.raises(RetryLater):
                self.driver.drive(rule, batch, Deadline(600))
        for name in list(self.api.operations):
            self.api.finish(name, success=1)
        for rule, batch in dict.fromkeys(self.kicks):
            assert self.driver.drive(rule, batch, Deadline(600)) == DONE


def by_rule(message: dict) -> dict[str, dict]:
    return {rule["rule"]: rule for rule in message["rules"]}


def test_objects_no_event_announced_are_admitted_and_imported_with_their_batch():
    world = World()
    delivered = world.put("ct/s1/1.dcm", age=HOUR)
    world.event(delivered, "ct")
    lost = [world.put(f"ct/s1/{i}.dcm", age=HOUR) for i in (2, 3)] + [world.put("mr/a.dcm", age=2 * HOUR)]
    world.put("ct/s1/notes.txt", age=HOUR)  # no rule matches
    world.put("mr/draft-1.dcm", age=HOUR)  # ignored by its rule

    message = world.sweep()

    validate(message, world.publisher.messages[-1][2])
    assert message["outcome"] == "RECOVERED" and world.publisher.messages[-1][2]["admittedCount"] == "3"
    ct, rest = by_rule(message)["ct"], by_rule(message)["all"]
    assert (ct["listed"], ct["inWindow"], ct["matched"], ct["covered"], ct["admitted"]) == (4, 4, 3, 1, 2)
    assert rest["listed"] == 6 and rest["matched"] == 1 and rest["admitted"] == 1, "ct/ objects are counted by ct"
    assert sorted(item["uri"] for item in message["admitted"]) == sorted(f"gs://inbox-bkt/{o.name}" for o in lost)
    assert {item["batch"] for item in message["admitted"]} == {batch for _, batch in world.kicks[1:]} | {world.kicks[0][1]}
    world.drive_all()
    imported = [data for _, data, _ in world.publisher.messages if data["schema"] == "dicom-import-result/v1"]
    reported = sorted(item["uri"] for data in imported for item in data["objects"])
    assert reported == sorted(f"gs://inbox-bkt/{o.name}" for o in [delivered, *lost]), "each imported and reported once"


def test_objects_whose_batch_is_still_open_are_covered_not_admitted_again():
    world = World()
    objs = [world.put(f"ct/{i}.dcm", age=600) for i in range(3)]
    for obj in objs:
        world.event(obj, "ct")  # joined a batch that is still open
    message = world.sweep()
    assert message["outcome"] == "SUCCEEDED" and message["totals"]["covered"] == 3 and message["admitted"] == []
    assert len(world.kicks) == 1
    world.drive_all()
    assert len(world.api.imports) == 1


def test_objects_of_a_one_call_backfill_are_recognised_without_claims():
    world = World()
    objs = [world.put(f"ct/old/{i}.dcm", age=HOUR) for i in range(3)]
    members = [{"id": layout.object_id(o), "bucket": o.bucket, "name": o.name, "generation": o.generation}
               for o in objs[:2]]
    world.store.create(layout.record_path("ct", layout.EXACT_BATCH_PREFIX + "0123"),
                       {"batch": layout.EXACT_BATCH_PREFIX + "0123", "rule": "ct", "state": LISTED, "members": members})
    message = world.sweep()
    ct = by_rule(message)["ct"]
    assert (ct["coveredByBackfill"], ct["admitted"]) == (2, 1)
    assert [item["uri"] for item in message["admitted"]] == ["gs://inbox-bkt/ct/old/2.dcm"]


def test_a_backfill_started_while_the_rule_is_listed_is_recognised_before_admitting():
    world = World()
    objs = [world.put(f"ct/new/{i}.dcm", age=HOUR) for i in range(3)]
    backfill_prefix = f"batches/ct/{layout.EXACT_BATCH_PREFIX}"
    listings = []
    real_list = world.store.list

    def list_then_backfill(prefix: str):
        found = list(real_list(prefix))
        if prefix == backfill_prefix:
            listings.append(prefix)
            if len(listings) == 1:  # the backfill's record lands right after the rule's first read
                members = [{"id": layout.object_id(o), "bucket": o.bucket, "name": o.name,
                            "generation": o.generation} for o in objs]
                world.store.create(layout.record_path("ct", layout.EXACT_BATCH_PREFIX + "late"),
                                   {"batch": layout.EXACT_BATCH_PREFIX + "late", "rule": "ct", "state": LISTED,
                                    "members": members})
        return iter(found)

    world.store.list = list_then_backfill
    message = world.sweep()
    assert by_rule(message)["ct"]["coveredByBackfill"] == 3 and message["admitted"] == [] and world.kicks == []
    assert len(listings) == 2, "read again once, before admitting"


def test_backfill_records_are_not_read_again_per_page(monkeypatch):
    world = World()
    monkeypatch.setattr(sweep_module, "PAGE", 2)
    objs = [world.put(f"ct/b/{i}.dcm", age=HOUR) for i in range(6)]
    members = [{"id": layout.object_id(o), "bucket": o.bucket, "name": o.name, "generation": o.generation}
               for o in objs]
    path = layout.record_path("ct", layout.EXACT_BATCH_PREFIX + "b")
    world.store.create(path, {"batch": layout.EXACT_BATCH_PREFIX + "b", "rule": "ct", "state": LISTED,
                              "members": members})
    message = world.sweep()
    assert by_rule(message)["ct"]["coveredByBackfill"] == 6
    assert world.store.ops.count(("read", path)) == 1 and world.store.ops.count(
        ("list", f"batches/ct/{layout.EXACT_BATCH_PREFIX}")) == 1


def test_nothing_is_read_per_object_older_than_the_window():
    world = World()
    for i in range(50):
        world.put(f"ct/archive/{i:03d}.dcm", age=40 * 24 * HOUR)  # far older than the first window (24 h)
    new = [world.put(f"ct/new/{i}.dcm", age=HOUR) for i in range(4)]
    world.sweep()
    new_claims = {layout.claim_path("ct", layout.object_id(obj)) for obj in new}
    assert set(world.claim_reads()) == new_claims, "claims are read for the objects of the window only"
    assert not [op for op in world.store.ops if "archive" in op[1]]


def test_a_second_sweep_starts_at_the_checkpoint_minus_the_overlap_and_finds_nothing_new():
    world = World()
    world.put("ct/a.dcm", age=HOUR)
    first = world.sweep()
    assert first["totals"]["admitted"] == 1
    checkpoint = world.store.doc(CHECKPOINT_PATH)["to"]
    assert checkpoint == world.clock.now - 120, "the window ends settle_seconds before the sweep (Cloud Storage's clock)"

    world.clock.now += HOUR
    world.put("ct/young.dcm", age=60)  # younger than settle_seconds: left to its event, and to the next sweep
    reads = len(world.claim_reads())
    second = world.sweep()
    assert second["outcome"] == "SUCCEEDED" and second["totals"]["inWindow"] == 0
    assert second["window"]["from"] == progress_module_rfc(checkpoint - 600)
    assert len(world.claim_reads()) == reads

    world.clock.now += HOUR
    third = world.sweep()
    assert [item["uri"] for item in third["admitted"]] == ["gs://inbox-bkt/ct/young.dcm"]


def progress_module_rfc(epoch: float) -> str:
    from handlers.batch.results import rfc3339

    return rfc3339(epoch)


class Budget:
    """A deadline whose remaining time is scripted: enough for ``pages`` pages, then spent.

    A run takes its first page without asking; the deadline is asked before each further one.
    """

    def __init__(self, pages: int) -> None:
        self.left = pages - 1

    def remaining(self) -> float:
        self.left -= 1
        return 3600.0 if self.left >= 0 else 0.0

    @property
    def expired(self) -> bool:
        return False


def test_an_interrupted_sweep_resumes_where_its_listing_stopped(monkeypatch):
    monkeypatch.setattr(sweep_module, "PAGE", 3)
    world = World()
    names = [f"ct/{i:02d}.dcm" for i in range(8)]
    for name in names:
        world.put(name, age=HOUR)
    with pytest.raises(RetryLater, match="resumes where the listing stopped"):
        world.sweeper().run(Budget(pages=2))
    saved = world.store.doc(SWEEP_PATH)
    assert saved["rules"]["ct"]["after"] == names[5] and saved["rules"]["ct"]["admitted"] == 6
    assert world.reconcile_messages() == []

    message = world.sweep()  # the interrupted run released the sweep: resumed at once
    assert message["resumed"] == 1
    assert ("inbox-bkt", "ct/", names[5]) in world.source.calls, "listing resumed with startOffset"
    assert by_rule(message)["ct"]["admitted"] == 8 and by_rule(message)["ct"]["listed"] == 8, "each object once"
    assert len(world.reconcile_messages()) == 1
    assert len(world.kicks) == 1, "all joined one batch"


def test_a_running_sweep_is_not_run_twice_but_an_abandoned_one_is_taken_over():
    world = World()
    world.put("ct/a.dcm", age=HOUR)
    first = Progress(world.store, world.config, world.clock, worker="first")
    mine = first.begin()
    with pytest.raises(SweepBusy, match="is running"):
        Progress(world.store, world.config, world.clock, worker="second").begin()
    world.clock.now += progress_module.ABANDONED_AFTER_SECONDS + 1
    taken = Progress(world.store, world.config, world.clock, worker="second").begin()
    assert taken.data["worker"] == "second" and taken.data["resumed"] == 1
    with pytest.raises(SweepBusy, match="took the sweep over"):
        first.save(mine, mine.data)  # the first worker wakes up: it may not write over the new one


def test_since_sets_the_window_and_never_moves_the_checkpoint_back():
    world = World()
    world.put("ct/recent.dcm", age=HOUR)
    world.put("ct/older.dcm", age=3 * 24 * HOUR)
    world.sweep()
    checkpoint = world.store.doc(CHECKPOINT_PATH)["to"]
    world.clock.now += 10
    message = world.sweep(since=4 * 24 * HOUR)
    assert message["since"] == 4 * 24 * HOUR and message["totals"]["admitted"] == 1
    assert [item["uri"] for item in message["admitted"]] == ["gs://inbox-bkt/ct/older.dcm"]
    assert world.store.doc(CHECKPOINT_PATH)["to"] >= checkpoint


def test_hashed_names_never_reach_the_message():
    world = World(names="hashed")
    world.put("ct/PATIENT_DOE/a.dcm", age=HOUR)
    message = world.sweep()
    assert "DOE" not in repr(message) and message["admitted"][0]["uri"].startswith("sha256:")
    validate(message)


def test_a_result_that_could_not_be_published_is_published_once_by_the_next_run():
    world = World()
    world.put("ct/a.dcm", age=HOUR)
    world.publisher.failures = 1
    with pytest.raises(RetryLater, match="results topic unavailable"):
        world.sweep()
    assert world.store.doc(SWEEP_PATH)["state"] == "publishing"
    message = world.sweep()
    assert message["totals"]["admitted"] == 1 and len(world.reconcile_messages()) == 1
    assert len(world.kicks) == 1, "the admitted object was not admitted again"


def test_an_object_admitted_by_its_event_meanwhile_is_counted_covered():
    world = World()
    obj = world.put("ct/race.dcm", age=HOUR)
    real_read = world.store.read

    def read_then_event(path):
        found = real_read(path)
        if path == layout.claim_path("ct", layout.object_id(obj)) and found is None and not world.kicks:
            world.event(obj, "ct")  # the event lands between the sweep's claim read and its admission
        return found

    def read_then_event_once(path):
        world.store.read = real_read
        try:
            return read_then_event(path)
        finally:
            if not world.kicks:
                world.store.read = read_then_event_once

    world.store.read = read_then_event_once
    message = world.sweep()
    assert message["totals"]["covered"] == 1 and message["totals"]["admitted"] == 0
    assert message["outcome"] == "SUCCEEDED"


def imported_uris(world: World) -> list[str]:
    """The objects the import results reported, in order."""
    return [item["uri"] for _, data, _ in world.publisher.messages if data["schema"] == "dicom-import-result/v1"
            for item in data["objects"]]


def test_a_claim_whose_done_batch_does_not_list_its_object_does_not_cover_it():
    world = World()
    lost, other = world.put("ct/crash.dcm", age=HOUR), world.put("ct/ok.dcm", age=HOUR)
    real_marker = world.store.write_marker

    def die(path, metadata):
        raise ConnectionError("the instance died between the claim and the marker")

    world.store.write_marker = die
    with pytest.raises(ConnectionError):
        world.event(lost, "ct")  # the claim is written, the marker is not; the redelivery is lost for good
    world.store.write_marker = real_marker
    world.event(other, "ct")
    world.clock.now += 30
    world.drive_all()  # the batch is done, listed without crash.dcm
    done_batch = world.kicks[0][1]
    assert world.store.doc(layout.claim_path("ct", layout.object_id(lost)))["batch"] == done_batch

    driven = len(world.kicks)
    message = world.sweep()

    ct = by_rule(message)["ct"]
    assert (ct["matched"], ct["covered"], ct["admitted"]) == (2, 1, 1)
    assert [item["uri"] for item in message["admitted"]] == ["gs://inbox-bkt/ct/crash.dcm"]
    assert message["admitted"][0]["batch"] != done_batch, "the claim moved to the open batch"
    del world.kicks[:driven]
    world.drive_all()
    assert sorted(imported_uris(world)) == ["gs://inbox-bkt/ct/crash.dcm", "gs://inbox-bkt/ct/ok.dcm"]
    world.clock.now += HOUR
    assert world.sweep(since=2 * HOUR)["totals"]["admitted"] == 0, "covered by its new batch"


def test_the_record_of_each_listed_batch_the_claims_name_is_read_once_per_sweep(monkeypatch):
    monkeypatch.setattr(sweep_module, "PAGE", 2)
    world = World()
    for i in range(6):
        world.event(world.put(f"ct/{i}.dcm", age=HOUR), "ct")
    world.clock.now += 30
    world.drive_all()
    record = layout.record_path("ct", world.kicks[0][1])
    world.store.ops.clear()
    message = world.sweep()
    assert by_rule(message)["ct"]["covered"] == 6
    assert world.store.ops.count(("read", record)) == 1, "a listing never changes: read once, on the first page"


def test_objects_admitted_before_a_failed_admission_in_the_same_page_are_reported_on_resume():
    world = World()
    for i in range(2):
        world.put(f"ct/{i}.dcm", age=HOUR)
    real_admit, calls = world.intake.admit, []

    def admit_failing_once(obj, rule, deadline, **kwargs):
        calls.append(obj.name)
        if obj.name == "ct/1.dcm" and calls.count(obj.name) == 1:
            raise RetryLater("could not place the object in a batch in time")
        return real_admit(obj, rule, deadline, **kwargs)

    world.intake.admit = admit_failing_once
    with pytest.raises(RetryLater):
        world.sweep()  # ct/0.dcm admitted, the page not saved
    message = world.sweep()
    ct = by_rule(message)["ct"]
    assert (ct["covered"], ct["admitted"]) == (0, 2) and message["outcome"] == "RECOVERED"
    assert sorted(item["uri"] for item in message["admitted"]) == ["gs://inbox-bkt/ct/0.dcm", "gs://inbox-bkt/ct/1.dcm"]
    world.clock.now += 30
    world.drive_all()
    assert sorted(imported_uris(world)) == ["gs://inbox-bkt/ct/0.dcm", "gs://inbox-bkt/ct/1.dcm"], "each imported once"
    world.clock.now += HOUR
    assert world.sweep(since=3 * HOUR)["totals"]["covered"] == 2, "another sweep's admissions are covered"


def test_an_object_whose_marker_the_failed_run_did_not_write_is_admitted_again_on_resume():
    world = World()
    world.put("ct/0.dcm", age=HOUR)
    real_marker = world.store.write_marker

    def unavailable(path, metadata):
        raise ConnectionError("503 after the client's retries")

    world.store.write_marker = unavailable
    with pytest.raises(ConnectionError):
        world.sweep()  # the claim (naming the sweep) is written, the marker is not; the object's event is lost
    world.store.write_marker = real_marker
    message = world.sweep()
    assert by_rule(message)["ct"]["admitted"] == 1 and message["outcome"] == "RECOVERED"
    world.clock.now += 30
    world.drive_all()
    assert imported_uris(world) == ["gs://inbox-bkt/ct/0.dcm"], "its marker written by the resumed run"


def test_a_run_that_fails_releases_the_sweep_for_the_next_run():
    world = World()
    world.put("ct/0.dcm", age=HOUR)
    real_list = world.source.list

    def unavailable(*args, **kwargs):
        raise ConnectionError("503 after the client's retries")

    world.source.list = unavailable
    with pytest.raises(ConnectionError):
        world.sweep()
    world.source.list = real_list
    world.clock.now += 60
    message = world.sweep()  # the redelivered tick resumes it at once, no SweepBusy for 5 minutes
    assert message["resumed"] == 1 and message["totals"]["admitted"] == 1


def test_a_budget_under_the_page_reserve_still_takes_a_page_per_run(monkeypatch):
    monkeypatch.setattr(sweep_module, "PAGE", 3)
    world = World()
    for i in range(8):
        world.put(f"ct/{i:02d}.dcm", age=HOUR)
    small = sweep_module.PAGE_RESERVE_SECONDS / 2  # e.g. reconcile --timeout 30
    runs = 0
    while True:
        runs += 1
        try:
            message = world.sweeper().run(Deadline(small))
            break
        except RetryLater as exc:
            assert "budget spent" in str(exc) and runs < 10
    assert runs == 6, "one page a run: three pages of rule ct, then three of rule all"
    assert message["resumed"] == 5 and by_rule(message)["ct"]["admitted"] == 8

def log_lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_a_since_sweep_that_does_not_reach_back_to_the_checkpoint_leaves_it_for_the_next_sweep(capsys):
    world = World()
    world.sweep()
    checkpoint = world.store.doc(CHECKPOINT_PATH)
    world.clock.now += HOUR
    world.put("ct/lost.dcm", age=0)  # its event is lost
    world.clock.now += 5 * HOUR  # the hourly sweeps failed meanwhile (scheduler paused, function broken)
    capsys.readouterr()

    manual = world.sweep(since=HOUR)  # starts 5 hours after the checkpoint: the lost object is not in it

    assert world.store.doc(CHECKPOINT_PATH) == checkpoint, "the span between was never swept: the checkpoint stays"
    validate(manual, world.publisher.messages[-1][2])
    assert manual["totals"]["admitted"] == 0 and manual["checkpoint"] == {"moved": False}
    [done] = [line for line in log_lines(capsys) if line["message"] == "reconcile sweep done"]
    assert done["checkpointMoved"] is False and "next scheduled sweep starts there" in done["checkpointNote"]

    world.clock.now += HOUR
    scheduled = world.sweep()
    assert scheduled["window"]["from"] == progress_module_rfc(checkpoint["to"] - 600)
    assert [item["uri"] for item in scheduled["admitted"]] == ["gs://inbox-bkt/ct/lost.dcm"]
    assert "checkpoint" not in scheduled and world.store.doc(CHECKPOINT_PATH)["to"] == world.clock.now - 120
    world.clock.now += HOUR
    assert world.sweep()["totals"]["admitted"] == 0


def test_a_since_sweep_that_reaches_back_to_the_checkpoint_moves_it():
    world = World()
    world.sweep()
    world.clock.now += HOUR
    world.put("ct/lost.dcm", age=0)
    world.clock.now += 5 * HOUR
    message = world.sweep(since=7 * HOUR)
    assert [item["uri"] for item in message["admitted"]] == ["gs://inbox-bkt/ct/lost.dcm"]
    assert "checkpoint" not in message and world.store.doc(CHECKPOINT_PATH)["to"] == world.clock.now - 120


def test_a_since_run_never_discards_an_interrupted_sweep(monkeypatch, capsys):
    monkeypatch.setattr(sweep_module, "PAGE", 3)
    world = World()
    world.sweep()
    world.clock.now += HOUR
    names = [f"ct/{i:02d}.dcm" for i in range(8)]
    for name in names:
        world.put(name, age=0)  # every event lost
    world.clock.now += 5 * HOUR
    with pytest.raises(RetryLater):
        world.sweeper().run(Budget(pages=2))  # the scheduled sweep is interrupted
    interrupted = world.store.doc(SWEEP_PATH)
    checkpoint = world.store.doc(CHECKPOINT_PATH)

    with pytest.raises(UnfinishedSweep, match=f"sweep {interrupted['sweep']} .* was interrupted"):
        world.sweep(since=HOUR)
    assert world.store.doc(SWEEP_PATH) == interrupted and world.store.doc(CHECKPOINT_PATH) == checkpoint

    message = world.sweep()  # a run without --since (the next tick, or the operator) finishes it
    assert message["sweep"] == interrupted["sweep"] and message["resumed"] == 1
    assert by_rule(message)["ct"]["admitted"] == 8 and "checkpoint" not in message
    world.clock.now += 10
    assert world.sweep(since=HOUR)["totals"]["admitted"] == 0, "then --since runs"


def test_a_since_run_resumes_its_own_interrupted_sweep(monkeypatch):
    monkeypatch.setattr(sweep_module, "PAGE", 3)
    world = World()
    for i in range(8):
        world.put(f"ct/{i:02d}.dcm", age=HOUR)
    with pytest.raises(RetryLater):
        world.sweeper().run(Budget(pages=2), since=2 * HOUR)
    message = world.sweep(since=2 * HOUR)
    assert message["resumed"] == 1 and by_rule(message)["ct"]["admitted"] == 8


def checkpoint_older_than_the_claims(world: World):
    """A checkpoint 40 days old, and an object imported 39 days ago whose claim the lifecycle deleted since."""
    world.sweep()
    checkpoint = world.store.doc(CHECKPOINT_PATH)
    world.clock.now += DAY
    world.event(world.put("ct/imported.dcm", age=0), "ct")
    world.clock.now += 39 * DAY  # the scheduler was paused, or on_reconcile broken, all that time
    for path in [p for p in list(world.store.docs) if p.startswith("claims/")]:
        world.store.delete(path)
    return checkpoint


def test_a_window_from_an_old_checkpoint_is_capped_and_the_span_left_out_is_named(capsys):
    world = World()
    checkpoint = checkpoint_older_than_the_claims(world)
    world.put("ct/lost.dcm", age=2 * DAY)  # inside the capped window, its event lost
    capsys.readouterr()

    message = world.sweep()

    validate(message, world.publisher.messages[-1][2])
    cap = world.clock.now - MAX_RECONCILE_WINDOW_HOURS * HOUR
    assert message["window"]["from"] == progress_module_rfc(cap)
    assert [item["uri"] for item in message["admitted"]] == ["gs://inbox-bkt/ct/lost.dcm"], "never imported twice"
    unswept = {"from": progress_module_rfc(checkpoint["to"] - 600), "to": progress_module_rfc(cap)}
    assert message["checkpoint"] == {"moved": True, "unswept": unswept}
    assert world.store.doc(CHECKPOINT_PATH)["to"] == world.clock.now - 120, "the checkpoint moves on"
    [warning] = [line for line in log_lines(capsys) if line["message"].startswith("reconcile window capped")]
    assert warning["severity"] == "WARNING"
    assert (warning["unsweptFrom"], warning["unsweptTo"]) == (unswept["from"], unswept["to"])
    assert "python -m handlers backfill" in warning["action"]

    world.clock.now += HOUR
    assert "checkpoint" not in world.sweep(), "the next sweep starts at the new checkpoint"


def test_a_since_sweep_over_an_old_checkpoint_moves_it_only_from_the_cap():
    world = World()
    checkpoint = checkpoint_older_than_the_claims(world)
    short = world.sweep(since=HOUR)
    assert world.store.doc(CHECKPOINT_PATH) == checkpoint and short["checkpoint"] == {"moved": False}
    world.clock.now += 10
    longest = world.sweep(since=MAX_RECONCILE_WINDOW_HOURS * HOUR)
    assert longest["checkpoint"]["moved"] and longest["checkpoint"]["unswept"]["from"] == progress_module_rfc(
        checkpoint["to"] - 600)
    assert longest["totals"]["admitted"] == 0 and world.store.doc(CHECKPOINT_PATH)["to"] == world.clock.now - 120


# -- on_reconcile: the Cloud Scheduler tick, through functions-framework and main.py ---------------------------

def scheduler_tick(world: World, monkeypatch):
    """Deliver one Cloud Scheduler tick (a Pub/Sub message) to main.py's ``on_reconcile``, whose runtime sweeps
    ``world``: the HTTP response."""
    import base64
    from pathlib import Path

    from functions_framework import create_app

    from handlers import runtime

    instance = runtime.Runtime(world.config)
    instance.reconciler = world.sweeper()
    monkeypatch.setattr(runtime, "_runtime", instance)
    main = str(Path(__file__).resolve().parents[2] / "main.py")
    data = base64.b64encode(b"tick").decode()
    headers = {"ce-specversion": "1.0", "ce-type": "google.cloud.pubsub.topic.v1.messagePublished", "ce-id": "m-1",
               "ce-source": "//pubsub.googleapis.com/projects/p/topics/reconcile", "Content-Type": "application/json"}
    app = create_app("on_reconcile", main).test_client()
    return app.post("/", headers=headers, data=json.dumps({"message": {"data": data, "messageId": "m-1"}}))


def test_a_scheduled_tick_sweeps_publishes_one_result_and_moves_the_checkpoint(monkeypatch, capsys):
    world = World()
    world.sweep()
    before = world.store.doc(CHECKPOINT_PATH)["to"]
    world.clock.now += HOUR
    world.put("ct/lost.dcm", age=HOUR / 2)  # its event is lost
    published = len(world.publisher.messages)
    capsys.readouterr()

    response = scheduler_tick(world, monkeypatch)

    assert response.status_code == 200, response.get_data(as_text=True)
    [(topic, message, attributes)] = world.publisher.messages[published:]
    assert topic == world.config.results_topic and message["schema"] == "dicom-reconcile-result/v1"
    validate(message, attributes)
    assert message["outcome"] == "RECOVERED" and [item["uri"] for item in message["admitted"]] == [
        "gs://inbox-bkt/ct/lost.dcm"]
    assert message["window"]["from"] == progress_module_rfc(before - 600)
    assert world.store.doc(CHECKPOINT_PATH)["to"] == world.clock.now - 120 > before
    assert world.store.doc(SWEEP_PATH)["state"] == "done"
    [finished] = [line for line in log_lines(capsys) if line["message"] == "reconcile finished"]
    assert finished["severity"] == "INFO" and finished["sweep"] == message["sweep"]
    assert (finished["outcome"], finished["admitted"]) == ("RECOVERED", 1)


def test_a_tick_while_another_sweep_runs_is_acknowledged_and_does_nothing(monkeypatch, capsys):
    """docs/reconcile.md: a run that finds a live worker stops, and ``on_reconcile`` acknowledges the tick (the
    next hourly tick comes anyway; a redelivery with backoff would only pile onto the running sweep)."""
    world = World()
    world.put("ct/lost.dcm", age=HOUR)
    Progress(world.store, world.config, world.clock, worker="other").begin()  # its worker wrote just now
    held = world.store.doc(SWEEP_PATH)
    capsys.readouterr()

    response = scheduler_tick(world, monkeypatch)

    assert response.status_code == 200, "acknowledged: not redelivered"
    assert world.publisher.messages == [] and world.kicks == []
    assert world.store.doc(SWEEP_PATH) == held, "the other worker's sweep is left alone"
    assert world.store.read(CHECKPOINT_PATH) is None
    lines = log_lines(capsys)
    [skipped] = [line for line in lines if line["message"] == "reconcile skipped: another sweep is running"]
    assert skipped["severity"] == "INFO" and "is running" in skipped["reason"]
    assert not [line for line in lines if line["severity"] in ("WARNING", "ERROR")], lines
