"""A one-call backfill's failures are named like any batch's, from its source objects.

The batch record is written by the backfill CLI's own ``submit_exact``
(``importUri`` = the source pattern, no staging copy); the driver imports the
pattern, Cloud Logging names each failed file by its source URI
(``gs://BUCKET/NAME``, no generation), and verification reads the source
objects at the generation the listing recorded. A source that changed since the
listing is counted, never named with a guessed generation, and the result says so.
"""

import json
from types import SimpleNamespace

import pytest

from handlers.batch import layout
from handlers.batch.layout import DONE
from handlers.cli.backfill_plan import SourceObject, make_plan
from handlers.cli.backfill_run import Tally, submit_exact
from handlers.failures.header import inspect
from handlers.failures.history import failed_batches, open_failures
from handlers.retry import RetryLater
from localstack.samples import make_instance, new_uid
from tests.logcapture import log_stream
from tests.unit.test_batching import STORE, World
from tests.unit.test_failure_policies import policy_world
from tests.unit.test_failures import CONFLICT, message

BUCKET, PATTERN, LISTED = "inbox-bkt", "gs://inbox-bkt/archive/**.dcm", "5"


class Backfill:
    """``backfill gs://inbox-bkt/archive/`` of ``files`` (generation 5), recorded as one call and imported."""

    def __init__(self, world: World, files: dict[str, bytes], plan_world: World | None = None) -> None:
        self.world = world
        for name, data in files.items():
            world.store.add_source(BUCKET, name, LISTED, data)
        plan = make_plan((plan_world or world).config, BUCKET, "archive/",
                         [SourceObject(name, LISTED) for name in files])
        [group] = plan.groups
        assert group.source is not None and group.source.uri == PATTERN, group.staged_because
        runtime = SimpleNamespace(state=world.store, kick_batch=lambda rule, batch: world.kicks.append((rule, batch)))
        submit_exact(runtime, plan, group, Tally(), clock=world.clock)
        self.batch = world.kicks[-1][1]
        with pytest.raises(RetryLater):
            world.drive(self.batch)
        assert world.api.imports[-1] == (STORE, PATTERN), "imported from the source, no staging copy"
        self.operation = list(world.api.operations)[-1]

    def log(self, name: str, message: str, code: int = 3) -> None:
        """The entry the API writes: the source object it read, by its URI."""
        self.world.logging.add(self.operation, f"gs://{BUCKET}/{name}", message, code)

    def finish(self, success: int, failure: int) -> None:
        self.world.api.finish(self.operation, success=success, failure=failure,
                              error={"code": 3, "message": f"{failure} failed"} if failure else None)

    def overwrite(self, name: str, data: bytes, generation: str = "9") -> None:
        """A new generation replaces the listed one (no versioning: the listed generation is gone)."""
        self.world.store.sources.pop((BUCKET, name, LISTED), None)
        self.world.store.add_source(BUCKET, name, generation, data)


def stored(world: World, data: bytes) -> None:
    world.api.instances[inspect(data).path] = data


def staging_reads(world: World) -> list:
    return [op for op in world.store.ops if op[0] == "read_range"]


def test_failures_logging_names_by_source_uri_are_named_with_the_listed_generation_and_indexed():
    world = World()
    backfill = Backfill(world, {"archive/2019/ok.dcm": make_instance(new_uid(), new_uid(), new_uid()),
                                "archive/2019/empty.dcm": b"",
                                "archive/2019/text.dcm": b"radiology report\n" * 30})
    backfill.log("archive/2019/empty.dcm", "empty DICOM instance found")
    backfill.log("archive/2019/text.dcm", "not a DICOM file: File is missing DICOM File Meta Information header")
    backfill.finish(success=1, failure=2)
    assert world.drive(backfill.batch) == DONE
    data, _ = message(world)
    assert {(f["uri"], f["generation"], f["kind"], f["source"]) for f in data["failures"]} == {
        ("gs://inbox-bkt/archive/2019/empty.dcm", LISTED, "empty", "logging"),
        ("gs://inbox-bkt/archive/2019/text.dcm", LISTED, "not-dicom", "logging"),
    }
    assert (data["failuresListed"], data["failuresIncomplete"]) == (2, None)
    assert data["hint"] == "each failed file is named in failures with the API's reason"
    assert world.logging.calls == 1, "all listed at the first query: no waiting out the budget"
    assert staging_reads(world) == []
    # the failures and retry tools find them through the index
    [failed] = list(failed_batches(world.store, None, None))
    assert failed.batch == backfill.batch and failed.count == 2
    chosen, _ = open_failures(world.store, failed)
    assert {(f.name, f.generation) for f in chosen} == {("archive/2019/empty.dcm", LISTED),
                                                        ("archive/2019/text.dcm", LISTED)}


def test_a_logging_message_quoting_the_file_names_it_nowhere_when_names_are_hashed():
    world = World("hashed")  # recorded while names were plain (hashed mode stages backfills), concluded after
    name = "archive/DOE_JOHN_1960/img1.dcm"
    backfill = Backfill(world, {name: b"", "archive/ok.dcm": make_instance(new_uid(), new_uid(), new_uid())},
                        plan_world=World())
    backfill.log(name, f"cannot read the object: object gs://{BUCKET}/{name} not found in Cloud Storage", code=5)
    backfill.finish(success=1, failure=1)
    with log_stream() as lines:
        assert world.drive(backfill.batch) == DONE
    data, _ = message(world)
    [failure] = data["failures"]
    assert failure["error"] == {"code": 5,
                                "message": "cannot read the object: object [object name] not found in Cloud Storage"}
    record = world.store.doc(layout.record_path(data["rule"], backfill.batch))
    assert "file not imported" in lines.getvalue()
    assert "DOE_JOHN" not in json.dumps(data) + json.dumps(record["failures"][0]["message"]) + lines.getvalue()


def test_what_logging_does_not_list_is_verified_from_the_source_objects():
    world = World()
    study, series, sop = new_uid(), new_uid(), new_uid()
    ok = make_instance(new_uid(), new_uid(), new_uid())
    truncated = make_instance(new_uid(), new_uid(), new_uid())
    backfill = Backfill(world, {"archive/ok.dcm": ok, "archive/empty.dcm": b"",
                                "archive/text.dcm": b"radiology report\n" * 30,
                                "archive/truncated.dcm": truncated[:-40],
                                "archive/changed.dcm": make_instance(study, series, sop, patient_name="Changed^Name")})
    stored(world, ok)
    stored(world, make_instance(study, series, sop))  # an earlier version with the same UIDs
    backfill.finish(success=1, failure=4)  # Logging lists nothing (sampled)
    assert world.drive(backfill.batch) == DONE
    data, attributes = message(world)
    assert {f["uri"].rsplit("/", 1)[-1]: (f["kind"], f["source"], f["generation"]) for f in data["failures"]} == {
        "empty.dcm": ("empty", "verified", LISTED), "text.dcm": ("not-dicom", "verified", LISTED),
        "truncated.dcm": ("not-dicom", "verified", LISTED), "changed.dcm": ("conflict", "verified", LISTED)}
    assert data["failuresIncomplete"] is None and attributes["conflictCount"] == "1"
    assert staging_reads(world) == []
    assert ("read_source_range", f"{BUCKET}/archive/text.dcm#{LISTED}") in world.store.ops


def test_files_changed_since_the_listing_are_counted_not_named_and_the_result_says_why():
    world = World()
    backfill = Backfill(world, {"archive/empty.dcm": b"", "archive/overwritten.dcm": b"old\n" * 50})
    backfill.overwrite("archive/overwritten.dcm", b"new\n" * 50)
    world.store.add_source(BUCKET, "archive/late.dcm", "9", b"late\n" * 50)  # added after the listing
    for name in ("archive/empty.dcm", "archive/overwritten.dcm", "archive/late.dcm"):
        backfill.log(name, "empty DICOM instance found" if name.endswith("empty.dcm") else "not a DICOM file")
    backfill.finish(success=0, failure=3)
    assert world.drive(backfill.batch) == DONE
    data, _ = message(world)
    assert [(f["uri"], f["generation"]) for f in data["failures"]] == [("gs://inbox-bkt/archive/empty.dcm", LISTED)]
    assert data["failuresIncomplete"] == (
        "2 of 3 failures not named: Cloud Logging listed all 3; 2 of the files Cloud Logging listed changed under "
        "the import's source pattern since the backfill listing (overwritten, deleted, or added after it): which "
        "generation the import read is not known, so they are not named")
    assert world.logging.calls == 1, "every failure was listed: no waiting, no verification"
    assert "failuresIncomplete" in data["hint"]


def test_when_logging_lists_fewer_the_result_says_what_verification_could_not_see():
    world = World()
    backfill = Backfill(world, {"archive/empty.dcm": b"", "archive/overwritten.dcm": b"old\n" * 50})
    backfill.overwrite("archive/overwritten.dcm", b"new\n" * 50)
    backfill.log("elsewhere/x.dcm", "not a DICOM file")  # outside the import's pattern
    backfill.finish(success=0, failure=2)
    assert world.drive(backfill.batch) == DONE
    data, _ = message(world)
    assert [(f["uri"], f["kind"], f["source"]) for f in data["failures"]] == [
        ("gs://inbox-bkt/archive/empty.dcm", "empty", "verified")]
    reason = data["failuresIncomplete"]
    assert reason.startswith("1 of 2 failures not named: Cloud Logging listed 0 of 2 failures within 60 s")
    assert "; 1 more of Cloud Logging's entries named no file of this import (ignored); " in reason
    assert ("reading the objects and the store found 1 more; 1 of 2 other members changed since the backfill "
            "listing (overwritten or deleted), so what the import read cannot be checked; ") in reason
    assert "were checked" not in reason
    assert reason.endswith("objects added under it after the backfill listing are no members, and verification "
                           "does not see them")


def test_a_source_that_cannot_be_read_is_not_named_and_the_result_says_so(monkeypatch):
    world = World()
    backfill = Backfill(world, {"archive/empty.dcm": b"", "archive/text.dcm": b"text\n" * 50})
    backfill.log("archive/empty.dcm", "empty DICOM instance found")
    backfill.log("archive/text.dcm", "not a DICOM file")
    backfill.finish(success=0, failure=2)
    live_source = world.store.live_source

    def refused(bucket, name):
        if name == "archive/text.dcm":
            raise PermissionError("403 storage.objects.get denied")
        return live_source(bucket, name)

    monkeypatch.setattr(world.store, "live_source", refused)
    with log_stream() as lines:
        assert world.drive(backfill.batch) == DONE
    data, _ = message(world)
    assert [f["uri"] for f in data["failures"]] == ["gs://inbox-bkt/archive/empty.dcm"]
    assert data["failuresIncomplete"] == (
        "1 of 2 failures not named: Cloud Logging listed all 2; 1 of the files Cloud Logging listed could not be "
        "read from Cloud Storage to confirm the generation the import read (a failed call: see the function's "
        "log), so they are not named")
    assert '"error": "PermissionError"' in lines.getvalue() and "archive/text.dcm" not in lines.getvalue()


def test_the_rules_policy_applies_to_exactly_the_listed_generation():
    world = policy_world("on_failure: {quarantine: gs://quarantine-bkt/failed/, move: true}")
    backfill = Backfill(world, {"archive/empty.dcm": b"",
                                "archive/ok.dcm": make_instance(new_uid(), new_uid(), new_uid())})
    backfill.log("archive/empty.dcm", "empty DICOM instance found")
    backfill.finish(success=1, failure=1)
    assert world.drive(backfill.batch) == DONE
    [failure] = message(world)[0]["failures"]
    assert failure["action"] == {"policy": "quarantine", "to": "gs://quarantine-bkt/failed/archive/empty.dcm",
                                 "done": True, "moved": True}
    assert ("delete_source", f"{BUCKET}/archive/empty.dcm#{LISTED}") in world.store.ops
    assert world.store.source_in("quarantine-bkt", "failed/archive/empty.dcm") is not None


def test_a_conflict_is_replaced_with_the_uids_read_from_the_source_object():
    world = policy_world("on_conflict: replace")
    study, series, sop = new_uid(), new_uid(), new_uid()
    stored(world, make_instance(study, series, sop))
    backfill = Backfill(world, {"archive/changed.dcm": make_instance(study, series, sop, patient_name="New^Name")})
    backfill.log("archive/changed.dcm", CONFLICT, code=6)
    backfill.finish(success=0, failure=1)
    assert world.drive(backfill.batch) == DONE
    child = f"{backfill.batch}-replace"
    [failure] = message(world)[0]["failures"]
    assert failure["action"] == {"policy": "replace", "done": True, "batch": child}
    record = world.store.doc(layout.record_path("all", child))
    assert [(m["name"], m["generation"]) for m in record["members"]] == [("archive/changed.dcm", LISTED)]
    assert list(record["replaceInstances"].values()) == [f"studies/{study}/series/{series}/instances/{sop}"]
    assert record["importUri"] == layout.import_uri("state-bkt", "all", child), "the child imports through staging"


def test_hashed_names_stay_hashed_for_a_backfill_recorded_before_the_switch():
    world = World("hashed")  # a one-call batch recorded while names were plain, concluded after the switch
    backfill = Backfill(world, {"archive/patient-smith.dcm": b"", "archive/patient-jones.dcm": b"x\n" * 90},
                        plan_world=World())
    backfill.overwrite("archive/patient-jones.dcm", b"y\n" * 90)
    backfill.log("archive/patient-smith.dcm", "empty DICOM instance found")
    backfill.log("archive/patient-jones.dcm", "not a DICOM file")
    backfill.finish(success=0, failure=2)
    with log_stream() as lines:
        assert world.drive(backfill.batch) == DONE
    data, _ = message(world)
    assert [f["uri"][:7] for f in data["failures"]] == ["sha256:"] and data["failuresListed"] == 1
    index = [item.metadata for item in world.store.list(layout.failed_index_prefix())]
    everything = json.dumps(data) + json.dumps(index) + lines.getvalue()
    assert "patient-" not in everything, "no plain name in the message, the index or the logs"
    assert "file not imported" in lines.getvalue()
