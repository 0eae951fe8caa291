"""Every failed file named in the result: Cloud Logging first, verification for what it does not list.

The batching world of test_batching (in-memory state, scripted API) plus a fake
Cloud Logging; real DICOM bytes so the header walker and the store comparison
have something to read.
"""

import json

import pytest

from handlers.batch import layout
from handlers.batch.layout import COLLECTING, DONE
from handlers.clients.healthcare import ApiError
from handlers.events import StorageObject
from handlers.retry import Deadline, RetryLater
from localstack.samples import make_instance, new_uid
from tests.fakes import md5
from tests.logcapture import log_stream
from tests.unit.test_batching import World

CONFLICT = ("An instance already exists in this DICOM Store with the same Study/Series/SOPInstance UID, "
            "but the DICOM files differ (checksum mismatch).")


class Drop:
    """Files of one batch: their bytes, what the store holds afterwards, and the batch id."""

    def __init__(self, world: World, files: dict[str, bytes]) -> None:
        self.world = world
        self.files = files
        self.objects = {}
        for name, data in files.items():
            world.store.add_source("inbox-bkt", name, "7", data)
            obj = StorageObject("inbox-bkt", name, "7", len(data), f"e-{name}")
            self.objects[name] = obj
            world.admit(obj)
        self.batch = world.kicks[-1][1]
        with pytest.raises(RetryLater):
            world.drive(self.batch)
        self.operation = list(world.api.operations)[-1]

    def staging_uri(self, name: str) -> str:
        return f"gs://state-bkt/{layout.staging_path('all', self.batch, layout.object_id(self.objects[name]))}"

    def log(self, name: str, message: str, code: int = 3, operation: str | None = None) -> None:
        self.world.logging.add(operation or self.operation, self.staging_uri(name), message, code)

    def finish(self, success: int, failure: int) -> None:
        self.world.api.finish(self.operation, success=success, failure=failure,
                              error={"code": 3, "message": f"{failure} failed"} if failure else None)

    def store_instance(self, data: bytes) -> None:
        from handlers.failures.header import inspect

        self.world.api.instances[inspect(data).path] = data


def bad_drop(world: World) -> tuple[Drop, dict[str, bytes]]:
    """A valid file, an empty one, a text file, a truncated DICOM file and a changed re-send of a stored instance."""
    study, series, sop = new_uid(), new_uid(), new_uid()
    stored_earlier = make_instance(study, series, sop)
    valid = make_instance(new_uid(), new_uid(), new_uid())
    truncated = make_instance(new_uid(), new_uid(), new_uid())
    files = {
        "drop/valid.dcm": valid,
        "drop/empty.dcm": b"",
        "drop/text.dcm": b"radiology report\n" * 30,
        "drop/truncated.dcm": truncated[:-40],
        "drop/changed.dcm": make_instance(study, series, sop, patient_name="Changed^Name"),
    }
    drop = Drop(world, files)
    drop.store_instance(valid)
    drop.store_instance(stored_earlier)
    return drop, files


def message(world: World) -> tuple[dict, dict]:
    [(_, data, attributes)] = world.publisher.messages
    return data, attributes


def test_a_batch_that_succeeded_makes_no_logging_call():
    world = World()
    drop = Drop(world, {"a.dcm": make_instance(new_uid(), new_uid(), new_uid())})
    drop.finish(success=1, failure=0)
    assert world.drive(drop.batch) == DONE
    data, attributes = message(world)
    assert world.logging.calls == 0
    assert (data["failures"], data["failuresListed"], data["failuresIncomplete"]) == ([], 0, None)
    assert attributes["conflictCount"] == "0"
    assert not list(world.store.list(layout.failed_index_prefix())), "no index entry without failures"


def test_failures_listed_by_logging_are_named_by_their_own_uri_with_their_kind():
    world = World()
    drop, _ = bad_drop(world)
    drop.log("drop/empty.dcm", "empty DICOM instance found")
    drop.log("drop/text.dcm", "not a DICOM file: File is missing DICOM File Meta Information header")
    drop.log("drop/truncated.dcm", "not a valid DICOM file: truncated: element (7FE0,0010) declares 128 bytes")
    drop.log("drop/changed.dcm", CONFLICT, code=6)
    drop.finish(success=1, failure=4)
    assert world.drive(drop.batch) == DONE
    data, attributes = message(world)
    assert world.logging.calls == 1, "all four listed at the first query"
    assert {(f["uri"], f["kind"], f["source"]) for f in data["failures"]} == {
        ("gs://inbox-bkt/drop/empty.dcm", "empty", "logging"),
        ("gs://inbox-bkt/drop/text.dcm", "not-dicom", "logging"),
        ("gs://inbox-bkt/drop/truncated.dcm", "not-dicom", "logging"),
        ("gs://inbox-bkt/drop/changed.dcm", "conflict", "logging"),
    }
    changed = next(f for f in data["failures"] if f["kind"] == "conflict")
    assert changed["error"] == {"code": 6, "message": CONFLICT} and changed["generation"] == "7"
    assert (data["failuresListed"], data["failuresIncomplete"], data["failuresManifest"]) == (4, None, None)
    assert attributes["conflictCount"] == "1" and attributes["failureCount"] == "4"
    assert data["hint"] == "each failed file is named in failures with the API's reason"
    query = world.logging.queries[0]
    op_id = drop.operation.rsplit("/", 1)[-1]
    assert f'operation.id="{drop.operation}"' in query and f'operation.id="{op_id}"' in query
    assert 'jsonPayload."@type"="type.googleapis.com/google.cloud.healthcare.logging.ImportDicomLogEntry"' in query
    index = list(world.store.list(layout.failed_index_prefix("all")))
    assert [i.name for i in index] == [layout.failed_index_path("all", drop.batch)]
    assert index[0].metadata["failures"] == "4"


def test_the_last_segment_form_of_operation_id_is_found_too():
    world = World()
    drop = Drop(world, {"a.dcm": b"", "b.dcm": make_instance(new_uid(), new_uid(), new_uid())})
    drop.log("a.dcm", "empty DICOM instance found", operation=drop.operation.rsplit("/", 1)[-1])
    drop.finish(success=1, failure=1)
    world.drive(drop.batch)
    assert message(world)[0]["failures"][0]["source"] == "logging"


def test_what_logging_does_not_list_is_verified_from_the_objects_and_the_store():
    world = World()
    drop, _ = bad_drop(world)
    drop.log("drop/text.dcm", "not a DICOM file: no preamble")  # sampling: only one entry written
    drop.finish(success=1, failure=4)
    assert world.drive(drop.batch) == DONE
    data, attributes = message(world)
    kinds = {f["uri"].rsplit("/", 1)[-1]: (f["kind"], f["source"]) for f in data["failures"]}
    assert kinds == {"text.dcm": ("not-dicom", "logging"), "empty.dcm": ("empty", "verified"),
                     "truncated.dcm": ("not-dicom", "verified"), "changed.dcm": ("conflict", "verified")}
    assert data["failuresListed"] == 4 and data["failuresIncomplete"] is None
    assert attributes["conflictCount"] == "1"
    assert world.logging.calls > 1, "polled while Logging could still catch up"
    assert len(world.api.searches) == 2, "one QIDO search per series (valid and changed)"


def test_a_result_never_claims_completeness_it_does_not_have():
    world = World()
    drop = Drop(world, {"a.dcm": make_instance(new_uid(), new_uid(), new_uid()),
                        "b.dcm": make_instance(new_uid(), new_uid(), new_uid())})
    for name in ("a.dcm", "b.dcm"):
        drop.store_instance(drop.files[name])
    drop.finish(success=0, failure=2)  # the API counted failures that neither Logging nor the store show
    world.drive(drop.batch)
    data, _ = message(world)
    assert data["failures"] == [] and data["failuresListed"] == 0
    assert data["failuresIncomplete"].startswith("2 of 2 failures not named: Cloud Logging listed 0 of 2")
    assert "all 2 other members were checked" in data["failuresIncomplete"]
    assert "failuresIncomplete" in data["hint"]


def test_logging_that_refuses_the_query_leads_straight_to_verification():
    world = World()
    drop = Drop(world, {"a.dcm": b"", "b.dcm": make_instance(new_uid(), new_uid(), new_uid())})
    world.logging.errors = [ApiError(403, "PERMISSION_DENIED", "logging.logEntries.list denied")]
    drop.finish(success=1, failure=1)
    world.drive(drop.batch)
    data, _ = message(world)
    assert world.logging.calls == 1, "a 403 is not retried"
    assert [(f["kind"], f["source"]) for f in data["failures"]] == [("empty", "verified")]


def test_waiting_for_logging_survives_the_end_of_a_delivery_and_publishes_once():
    world = World()
    drop = Drop(world, {"a.dcm": b"", "b.dcm": make_instance(new_uid(), new_uid(), new_uid())})
    drop.finish(success=1, failure=1)
    path = layout.record_path("all", drop.batch)
    with pytest.raises(RetryLater, match="Cloud Logging lists 0 of 1"):
        world.driver.drive("all", drop.batch, Deadline(6.5))
    record = world.store.doc(path)
    assert record["state"] == COLLECTING and record["operationResult"]["failure"] == 1
    drop.log("a.dcm", "empty DICOM instance found")  # ingested meanwhile
    assert world.drive(drop.batch) == DONE
    assert world.drive(drop.batch) == DONE
    data, _ = message(world)
    assert [(f["kind"], f["source"]) for f in data["failures"]] == [("empty", "logging")]


def test_a_delivery_that_waited_for_logging_leaves_verification_with_its_full_budget_to_the_next(monkeypatch):
    world = World()
    drop = Drop(world, {"a.dcm": b"", "b.dcm": make_instance(new_uid(), new_uid(), new_uid())})
    drop.finish(success=1, failure=1)  # Logging lists nothing within its 60 s
    monkeypatch.setattr("handlers.retry.time.monotonic", world.clock)  # deadlines on the world's clock
    with pytest.raises(RetryLater, match="verifying on the next delivery"):
        world.driver.drive("all", drop.batch, Deadline(75, start=world.clock.now))
    assert world.store.doc(layout.record_path("all", drop.batch))["state"] == COLLECTING
    polls = world.logging.calls
    # the wait is over: one Logging query, no waiting, then verification, even with a short budget
    assert world.driver.drive("all", drop.batch, Deadline(8, start=world.clock.now)) == DONE
    assert world.logging.calls == polls + 1
    data, _ = message(world)
    assert [(f["kind"], f["source"]) for f in data["failures"]] == [("empty", "verified")]


def test_more_than_100_failures_go_to_an_ndjson_manifest_with_hashed_names():
    world = World("hashed")
    # World seals at 3 objects: the large batch's record is written as the driver would list it.
    files = {f"patient-smith/{i:03d}.dcm": b"" for i in range(103)}
    drop = Drop.__new__(Drop)
    drop.world, drop.files, drop.objects = world, files, {}
    for name in files:
        world.store.add_source("inbox-bkt", name, "7", b"")
        drop.objects[name] = StorageObject("inbox-bkt", name, "7", 0, name)
    members = [{"id": layout.object_id(o), "bucket": o.bucket, "name": o.name, "generation": o.generation}
               for o in drop.objects.values()]
    drop.batch = "20270101T000000Z-big"
    world.store.create(layout.record_path("all", drop.batch), {
        "batch": drop.batch, "rule": "all", "store": "projects/p/locations/l/datasets/d/dicomStores/s",
        "state": "listed", "members": members, "openedAt": world.clock(), "sealedAt": world.clock(),
        "importUri": layout.import_uri("state-bkt", "all", drop.batch)})
    with pytest.raises(RetryLater):
        world.drive(drop.batch)
    drop.operation = list(world.api.operations)[-1]
    for name in files:
        drop.log(name, "empty DICOM instance found")
    drop.finish(success=0, failure=103)
    with log_stream() as lines:
        assert world.drive(drop.batch) == DONE
    data, _ = message(world)
    assert len(data["failures"]) == 100 and data["failuresListed"] == 103
    manifest = data["failuresManifest"]
    assert manifest == f"gs://state-bkt/failures/all/{drop.batch}.ndjson"
    text = world.store.blobs[manifest[len("gs://state-bkt/"):]][0].decode()
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) == 103 and all(row["uri"].startswith("sha256:") for row in rows)
    everything = json.dumps(data) + text + lines.getvalue()
    assert "patient-smith" not in everything, "hashed mode: no plain name in the message, manifest or logs"
    assert "file not imported" in lines.getvalue()


def test_a_conflict_is_verified_by_comparing_the_stored_bytes_with_the_members():
    world = World()
    same = make_instance(new_uid(), new_uid(), new_uid())
    study, series, sop = new_uid(), new_uid(), new_uid()
    changed = make_instance(study, series, sop, patient_name="Changed^Name")
    drop = Drop(world, {"same.dcm": same, "changed.dcm": changed})
    drop.store_instance(same)
    drop.store_instance(make_instance(study, series, sop))  # an earlier version with the same UIDs
    drop.finish(success=1, failure=1)
    world.drive(drop.batch)
    result, _ = message(world)
    assert [(f["uri"].rsplit("/", 1)[-1], f["kind"]) for f in result["failures"]] == [("changed.dcm", "conflict")]
    assert md5(same) != md5(changed)
