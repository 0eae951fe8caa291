"""Every failed file named in its result, end to end: real Cloud Storage (fake-gcs-server), Pub/Sub emulator,
the Healthcare emulator writing per-file errors to its Cloud Logging stand-in, and the functions.

One stack for the module (tests/e2e/failures.yaml): names are hashed everywhere, so results are matched to
files through the same NamePolicy, and a test greps every message, manifest and function log line for plain
names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import requests

from handlers.privacy import NamePolicy
from localstack.bridge import Backoff
from localstack.observe import Result, ResultsReader, api_calls
from localstack.samples import make_instance, make_study, new_uid
from localstack.stack import Stack
from tests.e2e.helpers import notification_event, storage, storage_event, unique_prefix, upload
from tests.message_schemas import validate

pytestmark = pytest.mark.e2e

CONFIG = Path(__file__).with_name("failures.yaml")
NAMES = NamePolicy("hashed")
LOGS_WAIT_SECONDS = 3.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, stack_owner: tuple[int, int]) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("failures-stack"), config=CONFIG, owner=stack_owner,
                  backoff=Backoff(initial=0.5, maximum=5.0),
                  function_env={"FAILURE_LOGS_WAIT_SECONDS": str(LOGS_WAIT_SECONDS)})
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def env(stack: Stack) -> dict[str, str]:
    return stack.env


@pytest.fixture
def emulator(env) -> Iterator[str]:
    """The emulator's admin URL; its faults and settings are put back after the test."""
    url = f"{env['HEALTHCARE_EMULATOR_HOST'].rstrip('/')}/emulator"
    before = requests.get(f"{url}/config", timeout=10).json()
    yield url
    requests.delete(f"{url}/faults", timeout=10)
    requests.put(f"{url}/config", json=before, timeout=10)


def hashed(env, name: str) -> str:
    return NAMES.uri(env["INBOX_BUCKET"], name)


_covered: dict[str, set[str]] = {}


def covered(env, result: Result) -> set[str]:
    """The hashed URIs a result covers: listed, or (over 100 objects) its batch record's members, hashed here."""
    if result.data.get("objects") is not None:
        return {o["uri"] for o in result.data["objects"]}
    manifest = result.data["manifest"]
    if manifest not in _covered:
        bucket, _, path = manifest[len("gs://"):].partition("/")
        record = json.loads(storage(env).bucket(bucket).blob(path).download_as_bytes())
        _covered[manifest] = {NAMES.uri(m["bucket"], m["name"]) for m in record["members"]}
    return _covered[manifest]


def wait_for(reader: ResultsReader, env, names, timeout: float = 90) -> list[Result]:
    """The import results covering every one of ``names`` (matched by their hashed URIs)."""
    wanted = {hashed(env, name) for name in names}

    def covering(results):
        return [r for r in results if r.data.get("schema") == "dicom-import-result/v1" and wanted & covered(env, r)]

    reader.until(lambda got: wanted <= {uri for r in covering(got) for uri in covered(env, r)}, timeout)
    found = covering(reader.received)
    assert wanted <= {uri for r in found for uri in covered(env, r)}, "not every file was reported in time"
    for result in found:
        validate(result.data, result.attributes)
    return found


def bad_drop(env, reader, folder: str) -> tuple[dict[str, str], list[str]]:
    """Import one instance, then drop a valid study with four bad files; (kind expected per name, study names)."""
    study, series, sop = new_uid(), new_uid(), new_uid()
    original = f"{folder}original/{sop}.dcm"
    upload(env, [(original, make_instance(study, series, sop))])
    wait_for(reader, env, [original])
    files = [(f"{folder}drop/study/{uids.sop}.dcm", data) for uids, data in make_study(1, 3, patient_id="FAIL-1")]
    valid = make_instance(new_uid(), new_uid(), new_uid())
    bad = {
        f"{folder}drop/empty.dcm": (b"", "empty"),
        f"{folder}drop/report.dcm": (b"radiology report, not DICOM\n" * 20, "not-dicom"),
        f"{folder}drop/truncated.dcm": (valid[:-40], "not-dicom"),
        f"{folder}drop/re-sent.dcm": (make_instance(study, series, sop, patient_name="Changed^Name"), "conflict"),
    }
    upload(env, files + [(name, data) for name, (data, _) in bad.items()])
    return {name: kind for name, (_, kind) in bad.items()}, [name for name, _ in files]


def failures_of(results: list[Result]) -> dict[str, dict]:
    return {f["uri"]: f for r in results for f in r.data.get("failures") or []}


def test_each_failed_file_is_named_by_its_own_uri_with_its_kind(env, reader):
    folder = unique_prefix("report/named")
    kinds, valid = bad_drop(env, reader, folder)
    results = wait_for(reader, env, list(kinds) + valid)
    named = failures_of(results)
    assert {uri: f["kind"] for uri, f in named.items()} == {hashed(env, n): k for n, k in kinds.items()}
    assert {f["source"] for f in named.values()} == {"logging"}
    assert named[hashed(env, f"{folder}drop/empty.dcm")]["error"] == {"code": 3, "message": "empty DICOM instance found"}
    assert "checksum mismatch" in named[hashed(env, f"{folder}drop/re-sent.dcm")]["error"]["message"]
    assert sum(r.data["counter"]["failure"] for r in results) == 4
    assert sum(r.data["failuresListed"] for r in results) == 4
    assert all(r.data["failuresIncomplete"] is None for r in results)
    assert sum(int(r.attributes["conflictCount"]) for r in results) == 1


def test_with_logging_sampled_the_rest_are_verified_and_both_operation_id_forms_work(env, reader, emulator):
    requests.put(f"{emulator}/faults", json={"methods": {"dicomStores.import": {"logSampleAbove": 1}}},
                 timeout=10).raise_for_status()
    requests.put(f"{emulator}/config", json={"logOperationId": "id"}, timeout=10).raise_for_status()
    folder = unique_prefix("report/sampled")
    kinds, valid = bad_drop(env, reader, folder)
    results = wait_for(reader, env, list(kinds) + valid)
    named = failures_of(results)
    assert {uri: f["kind"] for uri, f in named.items()} == {hashed(env, n): k for n, k in kinds.items()}
    sources = sorted(f["source"] for f in named.values())
    assert sources == ["logging", "verified", "verified", "verified"], "one entry written, three verified"
    assert all(r.data["failuresIncomplete"] is None for r in results)


def test_with_logging_ingesting_late_the_driver_queries_again_and_logging_names_every_failure(env, reader, emulator):
    """Entries are listed 2.5 s after they are written: the query when the operation ends (within 0.5 s) finds
    none, and the driver polls (2 s, then 4 s more; LOGS_WAIT_SECONDS 3) until one finds them all."""
    requests.put(f"{emulator}/faults", json={"methods": {"dicomStores.import": {"logDelaySeconds": 2.5}}},
                 timeout=10).raise_for_status()
    folder = unique_prefix("report/delayed")
    kinds, valid = bad_drop(env, reader, folder)
    queries = api_calls(env).get("entries.list", 0)
    results = wait_for(reader, env, list(kinds) + valid)
    named = failures_of(results)
    assert {uri: f["kind"] for uri, f in named.items()} == {hashed(env, n): k for n, k in kinds.items()}
    assert {f["source"] for f in named.values()} == {"logging"}, "none left to verification"
    assert all(r.data["failuresIncomplete"] is None for r in results)
    failed = [r for r in results if r.data["counter"]["failure"]]
    assert api_calls(env).get("entries.list", 0) - queries > len(failed), "queried again while Logging caught up"


def test_hashed_names_never_appear_plain_in_messages_manifests_or_logs(stack, env, reader):
    """Every path that names a file: a manifest over 100 failures, tag, quarantine copy and move, replacement."""
    patient = "patient-doe-john"
    folder = unique_prefix(f"report/{patient}")
    names = [f"{folder}empty-{i:03d}.dcm" for i in range(101)] + [f"{folder}ok.dcm"]
    study, series, sop = new_uid(), new_uid(), new_uid()
    upload(env, [(f"replaced/{patient}/first.dcm", make_instance(study, series, sop))])
    wait_for(reader, env, [f"replaced/{patient}/first.dcm"])
    policy_files = [(f"{prefix}/{patient}/{unique_prefix('f')}bad.dcm", b"")
                    for prefix in ("tagged", "quarantined", "moved")]
    policy_files.append((f"replaced/{patient}/again.dcm", make_instance(study, series, sop, patient_name="X^Y")))
    upload(env, [(name, b"") for name in names[:-1]] + [(names[-1], make_instance(new_uid(), new_uid(), new_uid()))]
           + policy_files, threads=10)
    results = wait_for(reader, env, names + [name for name, _ in policy_files], timeout=120)
    [big] = [r for r in results if r.data["rule"] == "report"]
    assert big.data["failuresListed"] == 101 and len(big.data["failures"]) == 100
    origin = next(r for r in results if r.data["rule"] == "replaced")
    reader.until(lambda got: any(r.data.get("replaces") == origin.data["batch"] for r in got), timeout=60)
    bucket, _, path = big.data["failuresManifest"][len("gs://"):].partition("/")
    manifest = storage(env).bucket(bucket).blob(path).download_as_bytes().decode()
    rows = [json.loads(line) for line in manifest.splitlines()]
    assert {row["uri"] for row in rows} == {hashed(env, n) for n in names[:-1]}
    logs = "".join((stack.workdir / "logs" / f"{role}.log").read_text() for role in ("function", "followup"))
    for line in ("file not imported", "failure policy applied", "stored instance replaced"):
        assert line in logs, line
    for text in [json.dumps(r.data) + json.dumps(r.attributes) for r in reader.received] + [manifest, logs]:
        assert patient not in text

def test_tag_marks_the_failed_object_and_never_triggers_an_import(env, reader):
    folder = unique_prefix("tagged/t")
    bad, good = f"{folder}broken.dcm", f"{folder}good.dcm"
    generations = upload(env, [(bad, b"not DICOM\n" * 30), (good, make_instance(new_uid(), new_uid(), new_uid()))])
    [result] = wait_for(reader, env, [bad, good])
    [failure] = result.data["failures"]
    assert failure["action"] == {"policy": "tag", "done": True}
    blob = storage(env).bucket(env["INBOX_BUCKET"]).get_blob(bad)
    assert str(blob.generation) == generations[bad], "a metadata update keeps the generation"
    assert blob.metadata["dicom-import-error"].startswith("not-dicom: not a DICOM file")
    assert blob.metadata["dicom-import-batch"] == result.data["batch"]
    imports = api_calls(env).get("dicomStores.import", 0)
    metadata_update = notification_event(env, bad, generations[bad], "OBJECT_METADATA_UPDATE", metageneration="2")
    assert metadata_update.status_code == 200, "acknowledged, nothing to do"
    assert storage_event(env, bad, generations[bad]).status_code == 200, "a finalize event would be a duplicate"
    reader.until(lambda got: False, timeout=8)  # past the 3 s window: any import would have started
    assert api_calls(env).get("dicomStores.import", 0) == imports, "tagging started no import"
    assert not [r for r in reader.received if r.data.get("batch") != result.data["batch"]
                and hashed(env, bad) in covered(env, r)], "and no result"


def test_quarantine_copies_the_failed_file_with_its_error(env, reader):
    folder = unique_prefix("quarantined/q")
    bad = f"{folder}empty.dcm"
    upload(env, [(bad, b""), (f"{folder}ok.dcm", make_instance(new_uid(), new_uid(), new_uid()))])
    [result] = wait_for(reader, env, [bad])
    [failure] = result.data["failures"]
    assert failure["action"] == {"policy": "quarantine", "to": NAMES.uri(env["EXPORT_BUCKET"], f"quarantine/{bad}"),
                                 "done": True}
    copy = storage(env).bucket(env["EXPORT_BUCKET"]).get_blob(f"quarantine/{bad}")
    assert copy is not None and copy.size == 0
    assert copy.metadata["dicom-import-error"] == "empty: empty DICOM instance found"
    assert storage(env).bucket(env["INBOX_BUCKET"]).get_blob(bad) is not None, "copy only"


def test_quarantine_with_move_removes_the_failed_file_from_the_inbox(env, reader):
    folder = unique_prefix("moved/m")
    bad = f"{folder}report.dcm"
    upload(env, [(bad, b"radiology report\n" * 30), (f"{folder}ok.dcm", make_instance(new_uid(), new_uid(), new_uid()))])
    [result] = wait_for(reader, env, [bad])
    [failure] = result.data["failures"]
    assert failure["action"]["moved"] is True and failure["action"]["done"] is True
    assert storage(env).bucket(env["EXPORT_BUCKET"]).get_blob(f"moved/{bad}") is not None
    assert storage(env).bucket(env["INBOX_BUCKET"]).get_blob(bad) is None, "moved out of the inbox"


def test_replace_deletes_the_stored_instance_and_imports_the_re_sent_file(env, reader):
    folder = unique_prefix("replaced/r")
    study, series, sop = new_uid(), new_uid(), new_uid()
    original, re_sent = make_instance(study, series, sop), make_instance(study, series, sop, patient_name="Fixed^Name")
    upload(env, [(f"{folder}first.dcm", original)])
    wait_for(reader, env, [f"{folder}first.dcm"])
    upload(env, [(f"{folder}again.dcm", re_sent)])
    # The repair batch lists again.dcm too, and under load it may already be in: the origin is the one that repairs nothing.
    [origin] = [r for r in wait_for(reader, env, [f"{folder}again.dcm"]) if not r.data.get("replaces")]
    [failure] = origin.data["failures"]
    child = f"{origin.data['batch']}-replace"
    assert failure["kind"] == "conflict" and failure["action"] == {"policy": "replace", "done": True, "batch": child}
    reader.until(lambda got: any(r.data.get("replaces") == origin.data["batch"] for r in got), timeout=60)
    [repair] = [r for r in reader.received if r.data.get("replaces") == origin.data["batch"]]
    validate(repair.data, repair.attributes)
    assert repair.data["batch"] == child and repair.data["outcome"] == "SUCCEEDED"
    assert repair.data["objects"] == [{"uri": hashed(env, f"{folder}again.dcm"), "generation": failure["generation"]}]
    url = (f"{env['HEALTHCARE_EMULATOR_HOST'].rstrip('/')}/v1/{env['DICOM_STORE']}/dicomWeb/studies/{study}/series/"
           f"{series}/instances/{sop}")
    stored = requests.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=30)
    assert stored.status_code == 200 and stored.content == re_sent, "WADO: the store holds the re-sent bytes"


@pytest.fixture
def cli(stack, capsys):
    """The operator CLI in this process on this stack (``--env-file``): (exit code, stdout, stderr)."""
    import os

    from handlers.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        saved = dict(os.environ)
        capsys.readouterr()
        try:
            code = main(["--env-file", str(stack.env_path), *argv])
        finally:
            os.environ.clear()
            os.environ.update(saved)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_failures_lists_each_failed_file_with_its_reason(env, reader, cli):
    folder = unique_prefix("report/listed")
    upload(env, [(f"{folder}empty.dcm", b""), (f"{folder}ok.dcm", make_instance(new_uid(), new_uid(), new_uid()))])
    [result] = wait_for(reader, env, [f"{folder}empty.dcm"])
    code, out, err = cli("failures", "--since", "1h", "--rule", "report", "--kind", "empty")
    assert code == 0, err
    [line] = [line for line in out.splitlines() if hashed(env, f"{folder}empty.dcm") in line]
    assert f"  report  {result.data['batch']}  empty  " in line and "empty DICOM instance found" in line
    assert "folder" not in out and "listed-" not in out, "hashed mode: no plain name"
    code, out, _ = cli("failures", "--since", "1h", "--json", "--rule", "report")
    rows = [json.loads(line) for line in out.splitlines()]
    assert any(row["uri"] == hashed(env, f"{folder}empty.dcm") and row["kind"] == "empty" for row in rows)


def test_retry_imports_a_fixed_conflict_once(env, reader, cli):
    folder = unique_prefix("retried/r")
    study, series, sop = new_uid(), new_uid(), new_uid()
    re_sent = make_instance(study, series, sop, patient_name="Fixed^Name")
    upload(env, [(f"{folder}first.dcm", make_instance(study, series, sop))])
    wait_for(reader, env, [f"{folder}first.dcm"])
    upload(env, [(f"{folder}again.dcm", re_sent)])
    # The repair batch lists again.dcm too, and under load it may already be in: the origin is the one that repairs nothing.
    [origin] = [r for r in wait_for(reader, env, [f"{folder}again.dcm"]) if not r.data.get("replaces")]
    assert origin.data["failures"][0]["kind"] == "conflict"
    url = (f"{env['HEALTHCARE_EMULATOR_HOST'].rstrip('/')}/v1/{env['DICOM_STORE']}/dicomWeb/studies/{study}/series/"
           f"{series}/instances/{sop}")
    assert requests.delete(url, timeout=30).status_code == 200  # the operator resolves the conflict by hand

    code, out, err = cli("retry", origin.data["batch"])
    assert code == 0, err
    child = f"{origin.data['batch']}-retry1"
    assert out.splitlines() == [
        f"retried  {hashed(env, f'{folder}again.dcm')}  generation {origin.data['failures'][0]['generation']}  "
        f"conflict  from {origin.data['batch']}  in {child}",
        f"1 file retried in 1 batch ({child}): follow their results with `python -m handlers tail`"]
    reader.until(lambda got: any(r.data.get("retryOf") == origin.data["batch"] for r in got), timeout=60)
    [retried] = [r for r in reader.received if r.data.get("retryOf") == origin.data["batch"]]
    validate(retried.data, retried.attributes)
    assert retried.data["batch"] == child and retried.data["outcome"] == "SUCCEEDED"
    stored = requests.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=30)
    assert stored.content == re_sent

    imports = api_calls(env).get("dicomStores.import", 0)
    code, out, _ = cli("retry", origin.data["batch"])
    assert out.splitlines() == ["0 files retried in 0 batches"], "already taken over by the first retry"
    code, out, _ = cli("retry", "--failed-since", "1h", "--rule", "retried", "--kind", "conflict")
    assert out.splitlines() == ["0 files retried in 0 batches"], "each object retried once"
    reader.until(lambda got: False, timeout=5)
    assert api_calls(env).get("dicomStores.import", 0) == imports, "no second import"
