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
from localstack.observe import Result, ResultsReader
from localstack.samples import make_instance, make_study, new_uid
from localstack.stack import Stack
from tests.e2e.helpers import storage, unique_prefix, upload
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
def reader(env):
    reader = ResultsReader(env)
    reader.drain(quiet=0.5)
    return reader


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


def test_hashed_names_never_appear_plain_in_messages_manifests_or_logs(stack, env, reader):
    folder = unique_prefix("report/patient-doe-john")
    names = [f"{folder}empty-{i:03d}.dcm" for i in range(101)] + [f"{folder}ok.dcm"]
    upload(env, [(name, b"") for name in names[:-1]] + [(names[-1], make_instance(new_uid(), new_uid(), new_uid()))],
           threads=10)
    results = wait_for(reader, env, names, timeout=120)
    [result] = results
    assert result.data["failuresListed"] == 101 and len(result.data["failures"]) == 100
    bucket, _, path = result.data["failuresManifest"][len("gs://"):].partition("/")
    manifest = storage(env).bucket(bucket).blob(path).download_as_bytes().decode()
    rows = [json.loads(line) for line in manifest.splitlines()]
    assert {row["uri"] for row in rows} == {hashed(env, n) for n in names[:-1]}
    logs = "".join((stack.workdir / "logs" / f"{role}.log").read_text() for role in ("function", "followup"))
    assert "file not imported" in logs
    for text in [json.dumps(r.data) + json.dumps(r.attributes) for r in reader.received] + [manifest, logs]:
        assert "patient-doe-john" not in text
