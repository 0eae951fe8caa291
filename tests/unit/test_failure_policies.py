"""on_failure (tag, quarantine copy and move) and on_conflict (replace) in the driver's ``acting`` step.

In-memory state and a scripted API (tests/fakes.py); the same steps run end to end in
tests/e2e/test_failures.py.
"""

import json

import pytest
from google.api_core import exceptions as google_errors

from handlers.batch import driver as driver_module
from handlers.batch import layout
from handlers.batch.driver import Driver
from handlers.cli import failures as failures_command
from handlers.batch.layout import ACTING, DONE
from handlers.config import FailurePolicy, parse
from handlers.failures import policies, replace
from handlers.failures.model import Failure
from handlers.failures.header import inspect
from handlers.privacy import NamePolicy
from handlers.retry import Deadline, RetryLater
from localstack.samples import make_instance, new_uid
from tests.fakes import MemoryStateStore
from tests.logcapture import log_stream
from tests.unit.test_batching import CONFIG, World
from tests.unit.test_failures import CONFLICT, Drop, message


def policy_world(policy: str, object_names: str = "plain") -> World:
    world = World(object_names)
    text = CONFIG.replace("OBJECT_NAMES", object_names).replace("QUIET", "2.0").replace(
        '{name: all, match: "gs://inbox-bkt/**.dcm", store: main}',
        '{name: all, match: "gs://inbox-bkt/**.dcm", store: main, ' + policy + "}")
    world.config = parse(text, "config.yaml", {})
    world.rule = world.config.rules[0]
    world.intake = world.new_intake()
    world.driver = Driver(world.store, world.config, world.api, world.publisher, world.logging,
                          lambda r, b: world.kicks.append((r, b)), clock=world.clock, sleep=world.clock.sleep,
                          monotonic=world.clock)
    return world


def two_failures(world: World) -> Drop:
    drop = Drop(world, {"site/empty.dcm": b"", "site/text.dcm": b"not DICOM at all\n" * 20,
                        "site/ok.dcm": make_instance(new_uid(), new_uid(), new_uid())})
    drop.log("site/empty.dcm", "empty DICOM instance found")
    drop.log("site/text.dcm", "not a DICOM file: no preamble")
    drop.finish(success=1, failure=2)
    return drop


def test_tag_sets_the_error_on_the_failed_generation_and_keeps_it():
    world = policy_world("on_failure: tag")
    drop = two_failures(world)
    assert world.drive(drop.batch) == DONE
    generation, _, metadata = world.store.source_in("inbox-bkt", "site/empty.dcm")
    assert generation == "7", "a metadata update keeps the generation"
    assert metadata == {"dicom-import-error": "empty: empty DICOM instance found", "dicom-import-batch": drop.batch}
    assert world.store.source_in("inbox-bkt", "site/ok.dcm")[2] == {}, "files that were imported are not tagged"
    data, _ = message(world)
    assert {f["action"]["policy"] for f in data["failures"]} == {"tag"}
    assert all(f["action"]["done"] for f in data["failures"])


def test_quarantine_copies_the_failed_generation_under_the_same_name_with_the_error():
    world = policy_world("on_failure: {quarantine: gs://quarantine-bkt/failed/}")
    drop = two_failures(world)
    assert world.drive(drop.batch) == DONE
    _, data, metadata = world.store.source_in("quarantine-bkt", "failed/site/text.dcm")
    assert data == drop.files["site/text.dcm"]
    assert metadata["dicom-import-error"] == "not-dicom: not a DICOM file: no preamble"
    assert metadata["dicom-import-source"] == "gs://inbox-bkt/site/text.dcm#7"
    assert world.store.source_in("inbox-bkt", "site/text.dcm") is not None, "copy only: the file stays"
    result, _ = message(world)
    assert {f["action"]["to"] for f in result["failures"]} == {
        "gs://quarantine-bkt/failed/site/empty.dcm", "gs://quarantine-bkt/failed/site/text.dcm"}


def test_quarantine_move_deletes_exactly_the_failed_generation_and_hashes_the_destination():
    world = policy_world("on_failure: {quarantine: gs://quarantine-bkt/failed/, move: true}", "hashed")
    drop = two_failures(world)
    world.store.add_source("inbox-bkt", "site/empty.dcm", "8", b"a newer file under the same name")
    assert world.drive(drop.batch) == DONE
    assert world.store.source_in("quarantine-bkt", "failed/site/text.dcm") is not None
    assert ("inbox-bkt", "site/text.dcm", "7") not in world.store.sources, "moved"
    assert ("inbox-bkt", "site/empty.dcm", "8") in world.store.sources, "a newer generation is never touched"
    result, _ = message(world)
    actions = [f["action"] for f in result["failures"]]
    assert all(a["moved"] and a["to"].startswith("sha256:") for a in actions)


def test_a_generation_gone_before_the_policy_is_reported_not_retried():
    world = policy_world("on_failure: tag")
    drop = two_failures(world)
    del world.store.sources[("inbox-bkt", "site/text.dcm", "7")]
    world.drive(drop.batch)
    text = next(f for f in message(world)[0]["failures"] if f["uri"].endswith("text.dcm"))
    assert text["action"]["done"] is False and "gone" in text["action"]["error"]


def test_policy_progress_is_saved_when_a_delivery_runs_short_and_each_file_is_tagged_once(monkeypatch):
    world = policy_world("on_failure: tag")
    drop = two_failures(world)
    monkeypatch.setattr(driver_module, "ACT_MARGIN_SECONDS", 30_000.0)
    with pytest.raises(RetryLater, match="1 applied"):
        world.driver.drive("all", drop.batch, Deadline(20_000))
    record = world.store.doc(layout.record_path("all", drop.batch))
    assert record["state"] == ACTING and sum(1 for f in record["failures"] if f["action"]) == 1
    monkeypatch.setattr(driver_module, "ACT_MARGIN_SECONDS", 15.0)
    assert world.drive(drop.batch) == DONE
    assert len([op for op in world.store.ops if op[0] == "tag"]) == 2, "each failed file tagged once"


PATIENT = "DOE_JOHN_1960"


def refused(name: str, error: type = google_errors.Forbidden) -> google_errors.GoogleAPICallError:
    """What google-cloud-storage raises: the request URL (the name URL-encoded), then the server's message."""
    url = f"https://storage.googleapis.com/storage/v1/b/inbox-bkt/o/{name.replace('/', '%2F')}?ifGenerationMatch=7"
    server = f"svc@p.iam.gserviceaccount.com does not have storage.objects.update access to inbox-bkt/{name}."
    return error(f"PATCH {url}: {server}", errors=[{"message": server, "domain": "global", "reason": "x"}])


def test_a_refused_policy_names_no_object_in_the_result_the_record_or_the_log_when_names_are_hashed(monkeypatch):
    world = policy_world("on_failure: tag", "hashed")
    name = f"site/{PATIENT}/img1.dcm"
    drop = Drop(world, {name: b"", "site/ok.dcm": make_instance(new_uid(), new_uid(), new_uid())})
    drop.log(name, "empty DICOM instance found")
    drop.finish(success=1, failure=1)

    def tag_source(bucket, source_name, generation, metadata):
        raise refused(source_name)

    monkeypatch.setattr(world.store, "tag_source", tag_source)
    with log_stream() as lines:
        assert world.drive(drop.batch) == DONE
    result, _ = message(world)
    [failure] = result["failures"]
    assert failure["action"] == {"policy": "tag", "done": False, "error": (
        "Forbidden 403: svc@p.iam.gserviceaccount.com does not have storage.objects.update access to "
        "inbox-bkt/[object name].")}
    record = world.store.doc(layout.record_path("all", drop.batch))
    saved_actions = [f["action"] for f in record["failures"]]  # the record itself keeps plain names, by design
    everything = json.dumps(result) + json.dumps(saved_actions) + lines.getvalue()
    assert "failure policy applied" in lines.getvalue()
    assert PATIENT not in everything


def test_a_transient_policy_error_is_retried_without_naming_the_object(monkeypatch):
    world = policy_world("on_failure: tag", "hashed")
    name = f"site/{PATIENT}/img1.dcm"
    drop = Drop(world, {name: b"", "site/ok.dcm": make_instance(new_uid(), new_uid(), new_uid())})
    drop.log(name, "empty DICOM instance found")
    drop.finish(success=1, failure=1)
    monkeypatch.setattr(world.store, "tag_source", lambda *args: (_ for _ in ()).throw(
        refused(name, google_errors.ServiceUnavailable)))
    with pytest.raises(RetryLater, match=r"on_failure tag not applied yet: ServiceUnavailable 503") as raised:
        world.drive(drop.batch)
    assert PATIENT not in str(raised.value)


def failed_file(generation: str, name: str = "incoming/CT-1/img1.dcm") -> Failure:
    return Failure(f"id-{generation}", "inbox-bkt", name, generation, "conflict", 6, "files differ", "logging")


MOVE = FailurePolicy("quarantine", "quar-bkt", "failed/", move=True)


def test_quarantine_move_of_a_name_that_failed_before_keeps_the_first_copy():
    """The first failed generation's copy is its only copy once moved: the second one never overwrites it."""
    store = MemoryStateStore()
    store.add_source("inbox-bkt", "incoming/CT-1/img1.dcm", "100", b"first")
    first = policies.apply(store, MOVE, failed_file("100"), "B1")
    assert first == {"policy": "quarantine", "to": "gs://quar-bkt/failed/incoming/CT-1/img1.dcm", "moved": True,
                     "done": True}
    store.add_source("inbox-bkt", "incoming/CT-1/img1.dcm", "200", b"second")  # sent again under the same name
    second = policies.apply(store, MOVE, failed_file("200"), "B2")
    assert second == {"policy": "quarantine", "to": "gs://quar-bkt/failed/incoming/CT-1/img1.g200.dcm",
                      "moved": True, "done": True}
    assert store.source_in("quar-bkt", "failed/incoming/CT-1/img1.dcm")[1] == b"first"
    _, data, metadata = store.source_in("quar-bkt", "failed/incoming/CT-1/img1.g200.dcm")
    assert (data, metadata["dicom-import-source"]) == (b"second", "gs://inbox-bkt/incoming/CT-1/img1.dcm#200")
    assert store.source_in("inbox-bkt", "incoming/CT-1/img1.dcm") is None


def test_a_move_whose_delete_is_refused_keeps_the_copy_in_its_action_without_naming_the_object(monkeypatch):
    store = MemoryStateStore()
    name = f"incoming/{PATIENT}/img1.dcm"
    store.add_source("inbox-bkt", name, "100", b"first")
    monkeypatch.setattr(store, "delete_source", lambda *args: (_ for _ in ()).throw(refused(name)))
    action = policies.apply(store, MOVE, failed_file("100", name), "B1")
    assert action == {"policy": "quarantine", "to": f"gs://quar-bkt/failed/{name}", "done": True, "moved": False,
                      "error": "Forbidden 403: svc@p.iam.gserviceaccount.com does not have storage.objects.update "
                               "access to inbox-bkt/[object name]."}
    assert store.source_in("quar-bkt", f"failed/{name}")[1] == b"first", "the copy is there"
    assert store.source_in("inbox-bkt", name) is not None, "and so is the failed file"
    assert failures_command._action(failed_file("100", name).with_action(action), NamePolicy()) == (
        f"copied to gs://quar-bkt/failed/{name}, not moved: {action['error']}")
    monkeypatch.setattr(store, "delete_source", lambda *args: (_ for _ in ()).throw(
        refused(name, google_errors.ServiceUnavailable)))
    with pytest.raises(RetryLater, match="ServiceUnavailable 503") as raised:
        policies.apply(store, MOVE, failed_file("100", name), "B1")
    assert PATIENT not in str(raised.value)


def test_a_redelivered_quarantine_finds_its_own_copy_and_copies_nothing_more():
    store = MemoryStateStore()
    store.add_source("inbox-bkt", "incoming/CT-1/img1.dcm", "100", b"first")
    copy = FailurePolicy("quarantine", "quar-bkt", "failed/")
    action = policies.apply(store, copy, failed_file("100"), "B1")
    assert policies.apply(store, copy, failed_file("100"), "B1") == action
    assert [key[1] for key in store.sources if key[0] == "quar-bkt"] == ["failed/incoming/CT-1/img1.dcm"]


def test_when_both_quarantine_names_hold_other_objects_nothing_is_overwritten_or_deleted():
    store = MemoryStateStore()
    store.add_source("inbox-bkt", "incoming/CT-1/img1.dcm", "200", b"second")
    store.add_source("quar-bkt", "failed/incoming/CT-1/img1.dcm", "1", b"someone's")
    store.add_source("quar-bkt", "failed/incoming/CT-1/img1.g200.dcm", "2", b"someone else's")
    action = policies.apply(store, MOVE, failed_file("200"), "B2")
    assert action["done"] is False and action["error"] == policies.TAKEN
    assert store.source_in("quar-bkt", "failed/incoming/CT-1/img1.dcm")[1] == b"someone's"
    assert store.source_in("quar-bkt", "failed/incoming/CT-1/img1.g200.dcm")[1] == b"someone else's"
    assert store.source_in("inbox-bkt", "incoming/CT-1/img1.dcm") is not None, "not moved"


def test_generation_names_keep_the_extension_last():
    assert policies.generation_name("dir/x.dcm", "200") == "dir/x.g200.dcm"
    assert policies.generation_name("dir.v2/x", "200") == "dir.v2/x.g200"
    assert policies.generation_name("dir/.hidden", "200") == "dir/.hidden.g200"


def conflict_drop(world: World) -> tuple[Drop, bytes, bytes, str]:
    study, series, sop = new_uid(), new_uid(), new_uid()
    old, new = make_instance(study, series, sop), make_instance(study, series, sop, patient_name="Corrected^Name")
    drop = Drop(world, {"re-sent.dcm": new, "ok.dcm": make_instance(new_uid(), new_uid(), new_uid())})
    world.api.instances[inspect(old).path] = old
    drop.log("re-sent.dcm", CONFLICT, code=6)
    drop.finish(success=1, failure=1)
    return drop, old, new, inspect(new).path


def test_replace_deletes_the_stored_instance_in_a_child_batch_that_imports_the_file_again():
    world = policy_world("on_conflict: replace")
    drop, old, new, path = conflict_drop(world)
    assert world.drive(drop.batch) == DONE
    child = f"{drop.batch}-replace"
    assert world.kicks[-1] == ("all", child), "the child batch's driver is published"
    origin, _ = message(world)
    [failure] = origin["failures"]
    assert failure["action"] == {"policy": "replace", "done": True, "batch": child}
    record = world.store.doc(layout.record_path("all", child))
    assert record["replaces"] == drop.batch and [m["name"] for m in record["members"]] == ["re-sent.dcm"]
    assert world.api.instances[path] == old, "nothing is deleted before the child's import is claimed"

    with log_stream() as lines, pytest.raises(RetryLater):
        world.drive(child)  # deletes, then starts the import
    assert world.api.deleted == [path] and path not in world.api.instances
    copy = replace.saved_copy_path("all", child, failure_id(record))
    saved = world.store.blobs[copy][0]
    assert saved == old, "the replaced version is kept in the state bucket"
    [logged] = [line for line in map(json.loads, lines.getvalue().splitlines())
                if line["message"].startswith("stored instance replaced")]
    assert {key: logged.get(key) for key in ("instance", "object", "newGeneration", "savedCopy")} == {
        "instance": path, "object": "gs://inbox-bkt/re-sent.dcm", "newGeneration": record["members"][0]["generation"],
        "savedCopy": f"gs://state-bkt/{copy}"}
    assert logged["savedCopyGeneration"].isdigit() and "oldGeneration" not in logged
    child_operation = list(world.api.operations)[-1]
    assert world.api.imports[-1][1] == f"gs://state-bkt/staging/all/{child}/*"
    world.api.instances[path] = new  # what the import stores
    world.api.finish(child_operation, success=1)
    assert world.drive(child) == DONE
    result = world.publisher.messages[-1][1]
    assert result["replaces"] == drop.batch and result["outcome"] == "SUCCEEDED"


def failure_id(record: dict) -> str:
    return record["members"][0]["id"]


def test_a_replacement_redelivered_after_its_import_deletes_nothing():
    world = policy_world("on_conflict: replace")
    drop, old, new, path = conflict_drop(world)
    world.drive(drop.batch)
    child = f"{drop.batch}-replace"
    record = world.store.doc(layout.record_path("all", child))
    world.api.instances[path] = new  # as if an earlier delivery of the child had deleted and imported already
    for member in record["members"]:  # ...after staging its copies
        world.store.copy_in(member["bucket"], member["name"], member["generation"],
                            layout.staging_path("all", child, member["id"]), {})
    replace.replace_stored(world.store, world.api, {**record, "members": record["members"]},
                           world.config.names, Deadline(10))
    assert world.api.deleted == [], "the new bytes are stored: nothing to delete"


def test_at_most_one_replacement_per_object_generation():
    world = policy_world("on_conflict: replace")
    drop, old, new, path = conflict_drop(world)
    world.drive(drop.batch)
    assert world.drive(drop.batch) == DONE, "a redelivered origin changes nothing"
    child = f"{drop.batch}-replace"
    assert len([k for k in world.kicks if k[1] == child]) == 1
    with pytest.raises(RetryLater):
        world.drive(child)
    child_operation = list(world.api.operations)[-1]
    world.api.instances[path] = old  # somebody imported the old file again meanwhile: the child conflicts too
    member = world.store.doc(layout.record_path("all", child))["members"][0]
    world.logging.add(child_operation, f"gs://state-bkt/{layout.staging_path('all', child, member['id'])}", CONFLICT, 6)
    world.api.finish(child_operation, success=0, failure=1, error={"code": 3, "message": "1 failed"})
    assert world.drive(child) == DONE
    [failure] = world.publisher.messages[-1][1]["failures"]
    assert failure["kind"] == "conflict" and failure["action"]["done"] is False
    assert "at most one replacement per object generation" in failure["action"]["error"]
    assert not world.store.docs.get(layout.record_path("all", f"{child}-replace"))
