"""The gateway on the whole local stack: modality -> gateway -> inbox -> function -> DICOM store -> result.

One stack for this module (the end-to-end config: batches sealed after 3 s),
with the gateway ``make up`` starts. The faults stop fake-gcs-server while a
study is being sent, and SIGKILL the gateway mid-study.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pydicom
import pytest
import requests

from localstack import samples
from localstack.bridge import Backoff
from localstack.observe import ResultsReader, result_object_uris, store_sop_uids
from localstack.stack import Stack
from tests.e2e.helpers import storage
from tests.message_schemas import validate

from .helpers import storage_contexts, wait_for
from .test_dcmtk import dcmtk

pytestmark = [pytest.mark.stack, pytest.mark.e2e]
CONFIG = Path(__file__).resolve().parent.parent / "e2e" / "config.yaml"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, stack_owner: tuple[int, int]) -> Iterator[Stack]:
    # The filesystem backend keeps objects (the function's state too) across a restart of fake-gcs-server,
    # as Cloud Storage keeps them through an outage; the memory backend would forget what came before it.
    stack = Stack(tmp_path_factory.mktemp("gateway-stack"), config=CONFIG, owner=stack_owner,
                  backoff=Backoff(initial=0.5, maximum=5.0), gcs_backend="filesystem")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def _object_uri(env: dict[str, str], uids: samples.InstanceUids) -> str:
    return (f"gs://{env['INBOX_BUCKET']}/modalities/{env['GATEWAY_CALLING_AE_TITLE']}/"
            f"{uids.study}/{uids.series}/{uids.sop}.dcm")


def _reported(reader: ResultsReader, env: dict[str, str], uris: set[str], timeout: float = 120) -> Counter[str]:
    """Wait until import results cover every URI of ``uris``; how often each was reported (and check each message)."""
    counts: Counter[str] = Counter()
    seen: set[str] = set()

    def covered(results: list[Any]) -> bool:
        for result in results:
            if result.message_id in seen or result.data.get("schema") != "dicom-import-result/v1":
                continue
            seen.add(result.message_id)
            validate(result.data, result.attributes)
            counts.update(uri for uri in result_object_uris(env, result) if uri in uris)
        return set(counts) >= uris

    reader.until(covered, timeout, quiet=3.0)
    covered(reader.received)
    return counts


def _send(assoc: Any, items: list[tuple[samples.InstanceUids, bytes]]) -> list[int]:
    """C-STORE each item on an open association; the statuses."""
    datasets = [pydicom.dcmread(io.BytesIO(data)) for _, data in items]
    return [int(assoc.send_c_store(ds).get("Status", -1)) for ds in datasets]


def _associate(env: dict[str, str], items: list[tuple[samples.InstanceUids, bytes]]) -> Any:
    from pynetdicom import AE

    datasets = [pydicom.dcmread(io.BytesIO(data)) for _, data in items[:1]]
    ae = AE(ae_title=env["GATEWAY_CALLING_AE_TITLE"])
    assoc = ae.associate(env["GATEWAY_HOST"], int(env["GATEWAY_PORT"]), ae_title=env["GATEWAY_AE_TITLE"],
                         contexts=storage_contexts(datasets))
    assert assoc.is_established
    return assoc


def _healthz(stack: Stack) -> dict[str, Any]:
    return requests.get(f"{stack.gateway.url}/healthz", timeout=5).json()


def test_stack_env_names_the_gateway(stack: Stack) -> None:
    env = stack.env
    assert env["GATEWAY_HOST"] == "127.0.0.1" and int(env["GATEWAY_PORT"]) > 0
    assert (env["GATEWAY_AE_TITLE"], env["GATEWAY_CALLING_AE_TITLE"]) == ("DICOM-GCS", "LOCAL-SCU")
    assert "GATEWAY_PORT=" in stack.env_path.read_text()


def test_study_sent_by_storescu_is_in_the_store_and_reported(stack: Stack, tmp_path: Path) -> None:
    env = stack.env
    reader = ResultsReader(env)
    reader.drain()
    study = samples.make_study(2, 3, modality="MR")
    for number, (_, data) in enumerate(study):
        (tmp_path / f"{number}.dcm").write_bytes(data)
    result = dcmtk("storescu", "+sd", "-aet", env["GATEWAY_CALLING_AE_TITLE"], "-aec", env["GATEWAY_AE_TITLE"],
                   env["GATEWAY_HOST"], env["GATEWAY_PORT"], str(tmp_path))
    assert result.returncode == 0 and "Store Failed" not in result.stderr, result.stderr
    uris = {_object_uri(env, uids) for uids, _ in study}
    counts = _reported(reader, env, uris)
    assert counts == Counter({uri: 1 for uri in uris})
    assert {uids.sop for uids, _ in study} <= store_sop_uids(env)
    outcomes = {r.data["outcome"] for r in reader.received if set(result_object_uris(env, r)) & uris}
    assert outcomes == {"SUCCEEDED"}


def test_cloud_storage_down_while_a_study_is_sent(stack: Stack) -> None:
    """Every C-STORE succeeds while fake-gcs-server is stopped; every instance reaches the store once it is back.

    The outage starts between two instances of one association, once the first ones are uploaded:
    fake-gcs-server publishes an object's notification after storing it, so stopping it in the middle
    of an upload can keep the object and lose its event (Cloud Storage notifies every committed object).
    """
    env = stack.env
    reader = ResultsReader(env)
    reader.drain()
    study = samples.make_study(2, 5, modality="CT")
    assoc = _associate(env, study)
    delivered = stack.bridge_status()["routes"]["function"]["delivered"]
    try:
        assert _send(assoc, study[:3]) == [0] * 3
        wait_for(lambda: _healthz(stack)["pending"] == 0, what="the first instances uploaded")
        # ... and their notifications published (fake-gcs-server does it just after storing an object)
        wait_for(lambda: stack.bridge_status()["routes"]["function"]["delivered"] >= delivered + 3,
                 what="the first instances' events delivered")
        stack.stop_service("gcs")
        assert _send(assoc, study[3:]) == [0] * 7  # spooled, fsynced, acknowledged: the outage is invisible
    finally:
        assoc.release()
    health = _healthz(stack)
    assert health["pending"] >= 7
    stack.start_service("gcs")
    uris = {_object_uri(env, uids) for uids, _ in study}
    counts = _reported(reader, env, uris, timeout=180)
    assert set(counts) == uris
    assert {uids.sop for uids, _ in study} <= store_sop_uids(env)
    wait_for(lambda: _healthz(stack)["pending"] == 0, what="spool drained")


def test_gateway_killed_mid_study_loses_no_acknowledged_instance(stack: Stack) -> None:
    """SIGKILL after some C-STOREs succeeded: after a restart each acknowledged instance is imported exactly once."""
    env = stack.env
    reader = ResultsReader(env)
    reader.drain()
    study = samples.make_study(3, 8, modality="CT")
    assoc = _associate(env, study)
    assert _send(assoc, study[:12]) == [0] * 12
    acknowledged = [uids for uids, _ in study[:12]]
    stack.gateway.kill()  # a crash: no cleanup, uploads in flight cut off
    try:
        late = _send(assoc, study[12:13])
    except RuntimeError:  # pynetdicom refuses to send once it sees the association is gone
        late = [-1]
    assert late != [0]
    if assoc.is_established:
        assoc.abort()
    stack.gateway.start(port_wait=15.0)
    uris = {_object_uri(env, uids) for uids in acknowledged}
    counts = _reported(reader, env, uris, timeout=180)
    assert counts == Counter({uri: 1 for uri in uris}), "an acknowledged instance was lost or imported twice"
    assert {uids.sop for uids in acknowledged} <= store_sop_uids(env)
    wait_for(lambda: _healthz(stack)["pending"] == 0, what="spool drained")
    log = (stack.gateway.log_path).read_text()
    assert '"message": "spool resumed"' in log.split("starting")[-1]


def test_the_local_modality_gets_its_storage_commitment_once_the_study_is_in_the_bucket(stack: Stack) -> None:
    """The stack's gateway config sends LOCAL-SCU's reports to GATEWAY_COMMITMENT_PORT, where make demo listens."""
    from localstack.demo import Drop, ask_for_commitment

    env = stack.env
    items = samples.make_series(3, modality="CT")
    assoc = _associate(env, items)
    try:
        assert _send(assoc, items) == [0, 0, 0]
    finally:
        assoc.release()
    assert ask_for_commitment(env, Drop(cstore=items), timeout=60) == (1, 3, 0)
    inbox = storage(env).bucket(env["INBOX_BUCKET"])
    assert all(inbox.get_blob(_object_uri(env, uids).split("/", 3)[3]) is not None for uids, _ in items)


def test_the_demo_cstores_its_study_and_its_table_and_store_check_show_it_arrive(stack: Stack) -> None:
    """Issue 9's "the demo shows a C-STORE'd study arriving in the store", with make demo's own functions:
    its MR study sent by send_by_cstore, the storage commitment, the results it waits for, the C-STORE
    column of its table and its QIDO store check."""
    from localstack.demo import Drop, ask_for_commitment, build_drop, in_store, send_by_cstore, table, wait_for_results

    env = stack.env
    reader = ResultsReader(env)
    reader.drain()
    study = build_drop().cstore
    drop = Drop(cstore=study, valid_sops={uids.sop for uids, _ in study})  # only the demo's C-STORE part
    sent_at = time.time()
    assert send_by_cstore(env, drop) == [0] * len(study)
    assert ask_for_commitment(env, drop, timeout=60) == (1, len(study), 0)
    def ours(results: list) -> list[str]:  # this study's objects among those the results report, each batch once
        batches = {result.data["batch"]: result for result in results}
        return [uri for result in batches.values() for uri in result_object_uris(env, result)
                if any(sop in uri for sop in drop.valid_sops)]

    results = wait_for_results(reader, drop)
    # The stack's earlier sends may still be arriving and share a batch: the demo's wait counts them too.
    results = reader.until(lambda got: len(ours(got)) >= len(study), 60)
    shown = table(env, results, sent_at)
    header, _, *lines = shown.splitlines()
    assert header.split()[:6] == ["batch", "outcome", "objects", "C-STORE", "success", "failure"]
    columns = ("batch", "outcome", "objects", "cstore", "success", "failure", "wait", "latency")
    rows = [dict(zip(columns, line.split(), strict=True)) for line in lines]
    assert rows and all(row["outcome"] == "SUCCEEDED" for row in rows), shown
    # every object of every batch came by C-STORE, each one counted once, none failed
    assert all(row["objects"] == row["cstore"] == row["success"] and row["failure"] == "0" for row in rows), shown
    assert sum(int(row["cstore"]) for row in rows) >= len(study), shown  # the stack's earlier sends may join
    reported = ours(results)
    assert len(reported) == len(set(reported)) == len(study), shown  # this study's instances, each reported once
    assert in_store(env, drop) == len(study) and drop.valid_sops <= store_sop_uids(env)
