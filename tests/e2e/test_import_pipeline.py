"""The import pipeline end to end: real Cloud Storage (fake-gcs-server), Pub/Sub emulator, Healthcare
emulator, the functions under functions-framework, and events delivered as Eventarc does.
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from localstack import samples
from localstack.observe import api_calls, call_bound, store_sop_uids
from tests.e2e.conftest import MAX_OBJECTS, MAX_WAIT, QUIET
from tests.e2e.helpers import (
    covered_names,
    join_times,
    notification_event,
    storage_event,
    unique_prefix,
    upload,
    wait_for_names,
)
from tests.message_schemas import validate

pytestmark = pytest.mark.e2e


def imports_made(env) -> int:
    return api_calls(env).get("dicomStores.import", 0)


def test_multi_study_drop_is_in_the_store_with_failures_counted(env, reader):
    prefix = unique_prefix("drop")
    files, valid = [], set()
    for study in range(3):
        for uids, data in samples.make_study(2, 6, patient_id=f"E2E-{study}"):
            files.append((f"{prefix}site/{study}/{uids.series}/{uids.sop}.dcm", data))
            valid.add(uids.sop)
    corrupt = [f"{prefix}site/0/broken.dcm", f"{prefix}empty.dcm"]
    files += [(corrupt[0], b"\x00" * 200), (corrupt[1], b"")]
    not_imported = [(f"{prefix}notes.txt", b"text"), (f"{prefix}a/draft-1.dcm", files[0][1]),
                    (f"tmp/{prefix}x.dcm", files[0][1])]
    before = imports_made(env)

    generations = upload(env, files + not_imported)
    matched = [name for name, _ in files]
    results = wait_for_names(reader, env["INBOX_BUCKET"], prefix, matched, timeout=90, quiet=MAX_WAIT + 1)

    covered = covered_names(results, env["INBOX_BUCKET"], prefix)
    assert set(covered) == set(matched), "exactly the matched objects are reported"
    assert all(count == 1 for count in covered.values()), "each object reported by one batch"
    assert valid <= store_sop_uids(env)
    assert sum(r.data["counter"]["failure"] for r in results) == len(corrupt)
    assert sum(r.data["counter"]["success"] for r in results) == len(valid)
    joins = join_times(env, "all-dicom", {name: generations[name] for name in matched})
    assert imports_made(env) - before <= call_bound(len(matched), MAX_OBJECTS, MAX_WAIT, QUIET, joins)
    for result in results:
        validate(result.data, result.attributes)
    assert {r.data["outcome"] for r in results} <= {"SUCCEEDED", "PARTIAL", "FAILED"}


def test_burst_in_one_folder_respects_the_call_bound(env, reader):
    prefix = unique_prefix("burst")
    files = [(f"{prefix}series/IMG{i:04d}.dcm", data) for i, (_, data) in enumerate(samples.make_series(75))]
    before = imports_made(env)
    generations = upload(env, files, threads=32)
    results = wait_for_names(reader, env["INBOX_BUCKET"], prefix, [n for n, _ in files], timeout=90)
    calls = imports_made(env) - before
    joins = join_times(env, "all-dicom", generations)
    bound = call_bound(len(files), MAX_OBJECTS, MAX_WAIT, QUIET, joins)
    gaps = [round(later - earlier, 2) for earlier, later in zip(joins, joins[1:])]
    assert calls <= bound, f"{calls} import calls for {len(files)} objects (bound {bound}; join gaps {gaps})"
    assert sum(r.data["objectCount"] for r in results) == len(files)


def test_lone_object_is_imported_within_the_window(env, reader):
    prefix = unique_prefix("lone")
    (uids, data), = samples.make_series(1)
    uploaded = time.time()
    upload(env, [(f"{prefix}one.dcm", data)])
    [result] = wait_for_names(reader, env["INBOX_BUCKET"], prefix, [f"{prefix}one.dcm"], timeout=30)
    started = datetime.fromisoformat(result.data["timings"]["importStartedAt"].replace("Z", "+00:00")).timestamp()
    assert started - uploaded <= MAX_WAIT + 2, f"import started {started - uploaded:.1f} s after upload"
    assert uids.sop in store_sop_uids(env)


def test_duplicate_and_late_events_change_nothing(env, reader):
    prefix = unique_prefix("dup")
    files = [(f"{prefix}{i}.dcm", data) for i, (_, data) in enumerate(samples.make_series(5))]
    generations = upload(env, files)
    wait_for_names(reader, env["INBOX_BUCKET"], prefix, generations, timeout=60)
    before = imports_made(env)
    received = len(reader.received)

    for name, generation in generations.items():
        assert storage_event(env, name, generation).status_code == 200
        assert storage_event(env, name, generation, event_id="same-id").status_code == 200
        assert notification_event(env, name, generation).status_code == 200
    reader.until(lambda got: False, timeout=MAX_WAIT + 3)

    assert imports_made(env) == before, "no import for duplicates"
    assert len(reader.received) == received, "no result message for duplicates"


def test_names_with_wildcard_and_special_characters_are_imported_exactly(env, reader):
    prefix = unique_prefix("names")
    names = [f"{prefix}with space.dcm", f"{prefix}ünï©ødé.dcm", f"{prefix}hash#1.dcm", f"{prefix}star*.dcm",
             f"{prefix}what?.dcm", f"{prefix}[bracket].dcm", prefix + "x" * (1024 - len(prefix) - 4) + ".dcm"]
    series = samples.make_series(len(names))
    upload(env, [(name, data) for name, (_, data) in zip(names, series)])
    # Look-alikes a '?' wildcard would also match: must not be imported by the batch above.
    results = wait_for_names(reader, env["INBOX_BUCKET"], prefix, names, timeout=60)
    assert {uids.sop for uids, _ in series} <= store_sop_uids(env)
    assert sum(r.data["counter"]["success"] for r in results) == len(names)


def test_pubsub_notification_delivery_imports_too(env, reader):
    prefix = unique_prefix("notif")
    (uids, data), = samples.make_series(1)
    name = f"{prefix}n.dcm"
    generation = upload(env, [(name, data)])[name]
    assert notification_event(env, name, generation).status_code == 200
    wait_for_names(reader, env["INBOX_BUCKET"], prefix, [name], timeout=30)
    assert uids.sop in store_sop_uids(env)


def test_import_refused_by_the_api_is_reported_with_a_hint(env, reader):
    prefix = unique_prefix("to-ghost/r")
    (_, data), = samples.make_series(1)
    upload(env, [(f"{prefix}a.dcm", data)])
    [result] = wait_for_names(reader, env["INBOX_BUCKET"], prefix, [f"{prefix}a.dcm"], timeout=30)
    assert result.data["outcome"] == "REJECTED" and result.attributes["outcome"] == "REJECTED"
    assert result.data["error"]["code"] == 404
    assert "check 'stores' in config.yaml" in result.data["hint"]
    assert result.data["counter"] == {"success": 0, "failure": 1}


def test_killed_function_processes_lose_nothing(e2e_stack, env, reader):
    prefix = unique_prefix("kill")
    series = samples.make_series(60)
    files = [(f"{prefix}{i:03d}.dcm", data) for i, (_, data) in enumerate(series)]
    upload(env, files[:30], threads=8)
    time.sleep(0.3)
    e2e_stack.functions["function"].kill()
    e2e_stack.functions["followup"].kill()
    upload(env, files[30:], threads=8)
    time.sleep(1.0)
    e2e_stack.functions["function"].start()
    e2e_stack.functions["followup"].start()

    results = wait_for_names(reader, env["INBOX_BUCKET"], prefix, [n for n, _ in files], timeout=180,
                             quiet=MAX_WAIT + 2)
    assert {uids.sop for uids, _ in series} <= store_sop_uids(env)
    batches = [r.data["batch"] for r in results]
    assert len(batches) == len(set(batches)), "each batch's result published once"


def test_two_instances_receiving_the_same_events_import_each_object_once(e2e_stack, env, reader, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from localstack.services import start_function

    second = start_function(tmp_path, target="on_object_finalized", env=env, name="second-instance",
                            owner=e2e_stack.owner)
    try:
        prefix = unique_prefix("two")
        series = samples.make_series(40)
        files = [(f"{prefix}{i:03d}.dcm", data) for i, (_, data) in enumerate(series)]
        before = imports_made(env)
        generations = upload(env, files)  # the bridge delivers each to the first instance...
        other = {**env, "FUNCTION_URL": second.url}
        with ThreadPoolExecutor(max_workers=16) as pool:  # ...and each goes to the second one too, concurrently
            statuses = list(pool.map(lambda item: storage_event(other, *item).status_code, generations.items()))
        assert set(statuses) == {200}
        results = wait_for_names(reader, env["INBOX_BUCKET"], prefix, generations, timeout=60, quiet=MAX_WAIT + 2)
    finally:
        second.stop()
    covered = covered_names(results, env["INBOX_BUCKET"], prefix)
    assert set(covered) == set(generations) and set(covered.values()) == {1}
    joins = join_times(env, "all-dicom", generations)
    assert imports_made(env) - before <= call_bound(len(files), MAX_OBJECTS, MAX_WAIT, QUIET, joins)
    assert {uids.sop for uids, _ in series} <= store_sop_uids(env)
