"""The gateway in this process, driven by a pynetdicom SCU, writing to fake-gcs-server."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from gateway.service import Gateway
from gateway.spool import Spool
from localstack import samples
from localstack.names import REPO_ROOT

from .helpers import (
    AE_TITLE,
    CALLING,
    captured_logs,
    certificate,
    gcs_inbox_factory,
    make_config,
    read_dataset,
    running_gateway,
    send,
    storage_contexts,
    wait_for,
)

pytestmark = pytest.mark.stack


@pytest.fixture
def gateway(tmp_path: Path, bucket: str, fake_gcs: Any):
    with running_gateway(make_config(tmp_path / "spool", bucket), gcs_inbox_factory(bucket, fake_gcs.url)) as gw:
        yield gw


def _objects(storage_client: Any, bucket: str) -> dict[str, Any]:
    return {blob.name: blob for blob in storage_client.list_blobs(bucket)}


def _datasets(items: list[tuple[samples.InstanceUids, bytes]]) -> list[Any]:
    return [read_dataset(data) for _, data in items]


def _dataset_bytes(part10: bytes) -> bytes:
    """The dataset that follows the file meta information of a Part 10 file."""
    ds = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True)
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return part10[meta_end:]


def test_c_echo_succeeds_and_is_logged(gateway: Any) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=CALLING)
    ae.add_requested_context(Verification)
    with captured_logs() as logs:
        assoc = ae.associate("127.0.0.1", gateway.receiver.port, ae_title=AE_TITLE)
        assert assoc.is_established
        status = assoc.send_c_echo()
        assoc.release()
        assert status.Status == 0x0000
        wait_for(lambda: any(line["message"] == "association released" for line in logs()), what="release logged")
    assert [line["callingAETitle"] for line in logs() if line["message"] == "C-ECHO"] == [CALLING]


def test_each_association_copies_the_contexts_sharing_their_uids(gateway: Any) -> None:
    """Per association, new context objects (negotiation cannot reach the server's) around the same UID objects."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=CALLING)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", gateway.receiver.port, ae_title=AE_TITLE)
    try:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        server_contexts = gateway.receiver._server.contexts
        (accepted,) = gateway.receiver._server.active_associations
        copies = accepted.acceptor.supported_contexts
    finally:
        assoc.release()
    assert len(copies) == len(server_contexts) > 100
    for copied, original in zip(copies, server_contexts):
        assert copied is not original and copied.transfer_syntax is not original.transfer_syntax
        assert copied.abstract_syntax is original.abstract_syntax  # shared, not rebuilt and re-validated
        assert copied.transfer_syntax == original.transfer_syntax
        assert all(a is b for a, b in zip(copied.transfer_syntax, original.transfer_syntax))


def test_three_series_study_lands_in_the_bucket_as_received(gateway: Any, bucket: str, storage_client: Any) -> None:
    study = samples.make_study(3, 4, modality="CT")
    statuses = send(gateway.receiver.port, _datasets(study))
    assert statuses == [0x0000] * 12
    expected = {f"in/{CALLING}/{u.study}/{u.series}/{u.sop}.dcm": data for u, data in study}
    objects = wait_for(lambda: (found := _objects(storage_client, bucket)) and len(found) == 12 and found,
                       what="12 objects")
    assert set(objects) == set(expected)
    for name, original in expected.items():
        stored = objects[name].download_as_bytes()
        assert _dataset_bytes(stored) == _dataset_bytes(original)  # the dataset exactly as sent, not re-encoded
        meta = pydicom.dcmread(io.BytesIO(stored)).file_meta
        assert meta.SourceApplicationEntityTitle == CALLING
        assert objects[name].content_type == "application/dicom"
    wait_for(lambda: gateway.spool.stats().segments == 0 or gateway.spool.stats().pending == 0, what="spool drained")
    assert gateway.spool.stats().pending == 0


def test_compressed_instance_is_stored_in_its_transfer_syntax(gateway: Any, bucket: str, storage_client: Any) -> None:
    original = samples.bundled_bytes("JPEG2000.dcm")
    uids, data = samples.with_new_uids(original)
    ds = read_dataset(data)
    assert send(gateway.receiver.port, [ds]) == [0x0000]
    name = f"in/{CALLING}/{uids.study}/{uids.series}/{uids.sop}.dcm"
    blob = wait_for(lambda: storage_client.bucket(bucket).get_blob(name), what="the JPEG 2000 object")
    stored = pydicom.dcmread(io.BytesIO(blob.download_as_bytes()))
    assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"
    assert stored.PixelData == ds.PixelData  # the compressed frames as sent, never transcoded


def _reject_reason(port: int, calling: str, called: str) -> tuple[int, int, int]:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_rejected and not assoc.is_established
    primitive = assoc.acceptor.primitive
    return primitive.result, primitive.result_source, primitive.diagnostic


def test_disallowed_calling_ae_is_rejected_with_reason_3(gateway: Any) -> None:
    with captured_logs() as logs:
        assert _reject_reason(gateway.receiver.port, "INTRUDER", AE_TITLE) == (1, 1, 3)
        line = wait_for(lambda: [l for l in logs() if l["message"] == "association rejected"], what="log")[0]
    assert line["callingAETitle"] == "INTRUDER" and line["reason"] == "calling AE title not recognised"


def test_wrong_called_ae_is_rejected_with_reason_7(gateway: Any) -> None:
    assert _reject_reason(gateway.receiver.port, CALLING, "SOMEONE-ELSE") == (1, 1, 7)


def test_client_address_outside_the_allow_list_is_rejected(tmp_path: Path, bucket: str, fake_gcs: Any) -> None:
    dicom = (f"dicom:\n  ae_title: {AE_TITLE}\n  address: 127.0.0.1\n  port: 0\n  calling_ae_titles: [{CALLING}]\n"
             "  clients: [10.99.0.0/16]\n")
    config = make_config(tmp_path / "spool", bucket, dicom=dicom)
    with running_gateway(config, gcs_inbox_factory(bucket, fake_gcs.url)) as gw, captured_logs() as logs:
        assert _reject_reason(gw.receiver.port, CALLING, AE_TITLE) == (1, 1, 1)
        assert wait_for(lambda: [l for l in logs() if l.get("reason") == "client address not in dicom.clients"])


def test_an_association_past_max_associations_is_rejected_transient_local_limit(tmp_path: Path, bucket: str,
                                                                                 fake_gcs: Any) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    dicom = (f"dicom:\n  ae_title: {AE_TITLE}\n  address: 127.0.0.1\n  port: 0\n  calling_ae_titles: [{CALLING}]\n"
             "  max_associations: 1\n")
    config = make_config(tmp_path / "spool", bucket, dicom=dicom)
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(Verification)
    with running_gateway(config, gcs_inbox_factory(bucket, fake_gcs.url)) as gw, captured_logs() as logs:
        first = ae.associate("127.0.0.1", gw.receiver.port, ae_title=AE_TITLE)
        assert first.is_established
        try:
            second = ae.associate("127.0.0.1", gw.receiver.port, ae_title=AE_TITLE)
            assert second.is_rejected
            primitive = second.acceptor.primitive
            assert (primitive.result, primitive.result_source, primitive.diagnostic) == (2, 3, 2)
            assert first.send_c_echo().Status == 0x0000  # the first association goes on
        finally:
            first.release()
        line = wait_for(lambda: [l for l in logs() if l["message"] == "association rejected"], what="log")[0]
        # The first association's thread ends after its release is answered: wait for its place to be free.
        wait_for(lambda: not gw.receiver._server.active_associations, what="the first association's end")
        again = ae.associate("127.0.0.1", gw.receiver.port, ae_title=AE_TITLE)  # a free place again
        assert again.is_established
        again.release()
    assert line["reason"] == "local limit exceeded (too many associations)" and line["callingAETitle"] == CALLING


def test_unknown_sop_class_context_is_refused_and_logged(gateway: Any) -> None:
    from pynetdicom import AE, build_context

    ae = AE(ae_title=CALLING)
    private = "1.2.826.0.1.3680043.9.9999.1"
    with captured_logs() as logs:
        assoc = ae.associate("127.0.0.1", gateway.receiver.port, ae_title=AE_TITLE,
                             contexts=[build_context(private), build_context("1.2.840.10008.5.1.4.1.1.2")])
        assert assoc.is_established
        assert [str(cx.abstract_syntax) for cx in assoc.rejected_contexts] == [private]
        assoc.release()
        line = wait_for(lambda: [l for l in logs() if l["message"] == "association accepted"], what="log")[0]
    assert line["rejectedContexts"] == [{"abstractSyntax": private, "result": 3}]


def test_additional_sop_classes_are_accepted_and_stored(tmp_path: Path, bucket: str, fake_gcs: Any,
                                                        storage_client: Any) -> None:
    """A vendor's private SOP class (here Siemens' CSA Non-Image Storage), listed in dicom.additional_sop_classes."""
    private = "1.3.12.2.1107.5.9.1"
    dicom = (f"dicom:\n  ae_title: {AE_TITLE}\n  address: 127.0.0.1\n  port: 0\n  calling_ae_titles: [{CALLING}]\n"
             f"  additional_sop_classes: ['{private}']\n")
    [(uids, data)] = samples.make_series(1)
    dataset = read_dataset(data)
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = private
    config = make_config(tmp_path / "spool", bucket, dicom=dicom)
    with captured_logs() as logs, running_gateway(config, gcs_inbox_factory(bucket, fake_gcs.url)) as gw:
        assert send(gw.receiver.port, [dataset]) == [0x0000]
        name = f"in/{CALLING}/{uids.study}/{uids.series}/{uids.sop}.dcm"
        stored = wait_for(lambda: _objects(storage_client, bucket).get(name), what=name).download_as_bytes()
        [listening] = [line for line in logs() if line["message"] == "DICOM receiver listening"]
    assert pydicom.dcmread(io.BytesIO(stored)).SOPClassUID == private
    assert listening["additionalSOPClasses"] == [private] and listening["storageSOPClasses"] > 100


def _raw_store(port: int, context_sop_class: str, request_sop_class: str, dataset: bytes,
               sop_instance: str | None = None) -> int:
    """A C-STORE whose request and dataset are exactly as given (pynetdicom's primitives, not hand-written DIMSE)."""
    from pynetdicom import AE, build_context
    from pynetdicom.dimse_primitives import C_STORE

    ae = AE(ae_title=CALLING)
    ae.dimse_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE,
                         contexts=[build_context(context_sop_class, ["1.2.840.10008.1.2.1"])])
    assert assoc.is_established
    try:
        request = C_STORE()
        request.MessageID = 7
        request.AffectedSOPClassUID = request_sop_class
        request.AffectedSOPInstanceUID = sop_instance or generate_uid()
        request.Priority = 2
        request.DataSet = io.BytesIO(dataset)
        context_id = assoc.accepted_contexts[0].context_id
        assoc._reactor_checkpoint.clear()  # as send_c_store does: the reactor must not take the response
        while not assoc._is_paused:
            pass
        try:
            assoc.dimse.send_msg(request, context_id)
            _, response = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
        return int(response.Status)
    finally:
        assoc.release()


def _refusals(logs: Any) -> list[dict[str, Any]]:
    return [line for line in logs() if line["message"] == "C-STORE refused"]


def test_sop_class_not_matching_its_context_gets_0122(gateway: Any) -> None:
    ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
    with captured_logs() as logs:
        assert _raw_store(gateway.receiver.port, ct, mr, _dataset_bytes(samples.make_series(1, modality="MR")[0][1])) == 0x0122
        assert [line["status"] for line in _refusals(logs)] == ["0x0122"]


def test_dataset_that_does_not_decode_gets_c210(gateway: Any, bucket: str, storage_client: Any) -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    garbage = b"\x08\x00\x16\x00XX\x04\x00abcd"  # an element with a value representation that does not exist
    with captured_logs() as logs:
        assert _raw_store(gateway.receiver.port, ct, ct, garbage) == 0xC210
        refusals = _refusals(logs)
    assert len(refusals) == 1 and refusals[0]["reason"].startswith("dataset does not decode")
    assert gateway.spool.stats().disk_bytes == 0
    assert _objects(storage_client, bucket) == {}


def _implicit_vr(part10: bytes) -> bytes:
    from pynetdicom.dsutils import encode

    return encode(read_dataset(part10), True, True)


@pytest.mark.parametrize("damage", ["truncated pixel data", "implicit VR on an explicit VR context"])
def test_dataset_that_pydicom_reads_but_is_damaged_gets_c210(gateway: Any, bucket: str, storage_client: Any,
                                                             damage: str) -> None:
    """pydicom reads past both (the pixel data is never read; the VR mismatch only warns): still refused."""
    (uids, data), = samples.make_series(1)
    dataset = _dataset_bytes(data)[:-100] if damage.startswith("truncated") else _implicit_vr(data)
    ct = "1.2.840.10008.5.1.4.1.1.2"
    with captured_logs() as logs:
        assert _raw_store(gateway.receiver.port, ct, ct, dataset, uids.sop) == 0xC210
        wait_for(lambda: [l for l in logs() if l["message"] == "association released"], what="release logged")
    assert [line["message"] for line in logs() if line["severity"] != "INFO"] == ["C-STORE refused"]
    assert _refusals(logs)[0]["reason"].startswith("dataset does not decode: Undecodable: ")
    assert gateway.spool.stats().disk_bytes == 0 and _objects(storage_client, bucket) == {}


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_missing_uid_gets_a900_not_a_crash(gateway: Any, missing: str) -> None:
    """The request names the SOP Instance UID (pynetdicom's SCU takes it from the dataset, so a raw C-STORE here):
    still, the dataset must carry each UID."""
    (uids, data), = samples.make_series(1)
    ds = read_dataset(data)
    delattr(ds, missing)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    ct = str(ds.SOPClassUID)
    with captured_logs() as logs:
        assert _raw_store(gateway.receiver.port, ct, ct, _dataset_bytes(buffer.getvalue()), uids.sop) == 0xA900
        refusals = _refusals(logs)
    assert len(refusals) == 1 and missing in refusals[0]["reason"]
    # the receiver goes on: the next association stores normally
    (_, good), = samples.make_series(1)
    assert send(gateway.receiver.port, [read_dataset(good)]) == [0x0000]


def test_dataset_without_sop_class_uid_gets_a900(gateway: Any) -> None:
    (_, data), = samples.make_series(1)
    ds = read_dataset(data)
    del ds.SOPClassUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    ct = "1.2.840.10008.5.1.4.1.1.2"
    with captured_logs() as logs:
        assert _raw_store(gateway.receiver.port, ct, ct, _dataset_bytes(buffer.getvalue()), ds.SOPInstanceUID) == 0xA900
        assert [line["reason"] for line in _refusals(logs)] == ["missing SOPClassUID: every instance needs its SOP Class UID"]


def test_spool_full_answers_out_of_resources(tmp_path: Path, bucket: str, fake_gcs: Any) -> None:
    spool = f"spool:\n  directory: {tmp_path / 'spool'}\n  max_megabytes: 0.05\n  segment_megabytes: 0.01\n"
    config = make_config(tmp_path / "spool", bucket, spool=spool)
    # uploads never succeed (no such bucket): the spool only grows
    with running_gateway(config, gcs_inbox_factory("no-such-bucket-gw", fake_gcs.url)) as gw, captured_logs() as logs:
        study = samples.make_series(12, rows=64, cols=64)  # about 8.5 KB each, 50 KB allowed
        statuses = send(gw.receiver.port, _datasets(study))
        assert statuses[:5] == [0x0000] * 5
        assert statuses[-1] == 0xA700
        assert {line["status"] for line in _refusals(logs)} == {"0xA700"}
        assert gw.spool.stats().disk_bytes <= 0.05 * 2**20


def test_identical_resend_is_not_uploaded_again_but_a_changed_one_is(gateway: Any, bucket: str,
                                                                       storage_client: Any) -> None:
    (uids, data), = samples.make_series(1)
    name = f"in/{CALLING}/{uids.study}/{uids.series}/{uids.sop}.dcm"
    changed = samples.make_instance(uids.study, uids.series, uids.sop, pixel_seed=99)

    with captured_logs() as logs:
        def outcomes(count: int) -> list[str]:
            """The outcomes of this object's uploads, once there are ``count``."""
            def found() -> list[str]:
                return [l["outcome"] for l in logs() if l["message"] == "instance uploaded" and l["object"].endswith(name)]
            wait_for(lambda: len(found()) >= count, what=f"{count} uploads")
            return found()

        assert send(gateway.receiver.port, [read_dataset(data)]) == [0]
        assert outcomes(1) == ["created"]
        first = storage_client.bucket(bucket).get_blob(name)
        assert send(gateway.receiver.port, [read_dataset(data)]) == [0]
        assert outcomes(2) == ["created", "identical"]
        assert storage_client.bucket(bucket).get_blob(name).generation == first.generation  # nothing written

        assert send(gateway.receiver.port, [read_dataset(changed)]) == [0]
        assert outcomes(3) == ["created", "identical", "replaced"]
    blob = storage_client.bucket(bucket).get_blob(name)
    assert blob.generation != first.generation and _dataset_bytes(blob.download_as_bytes()) == _dataset_bytes(changed)


def test_peer_dropping_the_connection_mid_transfer(gateway: Any, bucket: str, storage_client: Any) -> None:
    """A sender killed after part of a large instance: nothing stored, one log line, the receiver goes on."""
    with captured_logs() as logs:
        result = subprocess.run([sys.executable, "-m", "tests.gateway.drop_mid_transfer", str(gateway.receiver.port),
                                 CALLING, AE_TITLE], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr
        ended = wait_for(lambda: [l for l in logs() if l["message"].startswith("connection dropped")], what="log")
        time.sleep(0.5)
        assert [l["message"] for l in logs() if l["severity"] != "INFO"] == [ended[0]["message"]]
    assert len(ended) == 1 and ended[0]["stored"] == 0
    assert gateway.spool.stats().disk_bytes == 0 and _objects(storage_client, bucket) == {}
    (_, data), = samples.make_series(1)
    assert send(gateway.receiver.port, [read_dataset(data)]) == [0]


def test_healthz_fails_when_uploads_are_stuck(tmp_path: Path, fake_gcs: Any) -> None:
    health = "health:\n  address: 127.0.0.1\n  port: 0\n  stuck_after_seconds: 1\n  stats_every_seconds: 0.2\n"
    config = make_config(tmp_path / "spool", "no-such-bucket-gw", health=health)
    with running_gateway(config, gcs_inbox_factory("no-such-bucket-gw", fake_gcs.url)) as gw:
        url = f"http://127.0.0.1:{gw.health.port}/healthz"
        assert requests.get(url, timeout=5).status_code == 200
        (_, data), = samples.make_series(1)
        assert send(gw.receiver.port, [read_dataset(data)]) == [0]
        body = wait_for(lambda: (r := requests.get(url, timeout=5)).status_code == 503 and r.json(), what="503")
        assert body["pending"] == 1 and "uploads to Cloud Storage are failing" in body["problems"][0]


def test_a_clean_stop_logs_no_unhealthy_spool_line(tmp_path: Path, bucket: str, fake_gcs: Any) -> None:
    """The spool stats timer used to outlive the DICOM port at stop and log it as a problem (WARNING)."""
    health = "health:\n  address: 127.0.0.1\n  port: 0\n  stuck_after_seconds: 30\n  stats_every_seconds: 0.1\n"
    config = make_config(tmp_path / "spool", bucket, health=health)
    with captured_logs() as logs:
        with running_gateway(config, gcs_inbox_factory(bucket, fake_gcs.url)) as gw:
            stop_receiver = gw.receiver.stop
            gw.receiver.stop = lambda: (stop_receiver(), time.sleep(0.5))  # type: ignore[method-assign]
            wait_for(lambda: [line for line in logs() if line["message"] == "spool"], what="a spool line")
    assert [line["message"] for line in logs() if line["severity"] != "INFO"] == []


def test_restart_resumes_the_spool(tmp_path: Path, bucket: str, fake_gcs: Any, storage_client: Any) -> None:
    config = make_config(tmp_path / "spool", bucket)
    study = samples.make_study(2, 3)
    with running_gateway(config, gcs_inbox_factory("no-such-bucket-gw", fake_gcs.url)) as gw:
        assert send(gw.receiver.port, _datasets(study)) == [0] * 6
        assert gw.spool.stats().pending == 6
    assert list((tmp_path / "spool").glob("*.seg"))
    with running_gateway(config, gcs_inbox_factory(bucket, fake_gcs.url)) as gw:
        wait_for(lambda: len(_objects(storage_client, bucket)) == 6, what="6 objects after restart")
        wait_for(lambda: gw.spool.stats().pending == 0, what="spool drained")
    assert not list((tmp_path / "spool").glob("*.seg"))


def test_tls_with_client_certificates(tmp_path: Path, bucket: str, fake_gcs: Any, storage_client: Any) -> None:
    import ssl

    server_key, server_cert = certificate(tmp_path, "server")
    ca = certificate(tmp_path, "ca")
    client_key, client_cert = certificate(tmp_path, "client", ca=ca)
    tls = f"tls:\n  certificate: {server_cert}\n  private_key: {server_key}\n  client_ca: {ca[1]}\n"
    config = make_config(tmp_path / "spool", bucket, tls=tls)

    def client_context(with_certificate: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_cert))
        if with_certificate:
            context.load_cert_chain(str(client_cert), str(client_key))
        return context

    with running_gateway(config, gcs_inbox_factory(bucket, fake_gcs.url)) as gw, captured_logs() as logs:
        (uids, data), = samples.make_series(1)
        # A peer that connects and says nothing (a port scan, a TCP probe) must not hold up the others:
        # pynetdicom's own server made its handshake on the one accepting thread, with no timeout.
        with socket.create_connection(("127.0.0.1", gw.receiver.port)) as idle:
            threading.Timer(15, idle.close).start()  # before the fix, the send below waited for this
            started = time.monotonic()
            statuses = send(gw.receiver.port, [read_dataset(data)], tls=(client_context(True), "localhost"))
            assert statuses == [0] and time.monotonic() - started < 10
        assert wait_for(lambda: storage_client.bucket(bucket).get_blob(f"in/{CALLING}/{uids.study}/{uids.series}/{uids.sop}.dcm"))

        from pynetdicom import AE
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=CALLING)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", gw.receiver.port, ae_title=AE_TITLE,
                             tls_args=(client_context(False), "localhost"))
        assert not assoc.is_established  # no client certificate: the TLS handshake fails, nothing is negotiated
        failed = wait_for(lambda: [line for line in logs() if line["message"] == "TLS handshake failed"],
                          what="the handshake's log line")
        assert failed[-1]["severity"] == "WARNING" and failed[-1]["peer"].startswith("127.0.0.1:")


def test_tls_with_a_server_certificate_only(tmp_path: Path, bucket: str, fake_gcs: Any, storage_client: Any) -> None:
    """Without tls.client_ca, a client with no certificate of its own stores over TLS; one without TLS does not."""
    import ssl

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    server_key, server_cert = certificate(tmp_path, "server")
    tls = f"tls:\n  certificate: {server_cert}\n  private_key: {server_key}\n"  # no client_ca
    config = make_config(tmp_path / "spool", bucket, tls=tls)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_cert))
    (uids, data), = samples.make_series(1)
    with running_gateway(config, gcs_inbox_factory(bucket, fake_gcs.url)) as gw:
        assert send(gw.receiver.port, [read_dataset(data)], tls=(client, "localhost")) == [0]
        name = f"in/{CALLING}/{uids.study}/{uids.series}/{uids.sop}.dcm"
        assert wait_for(lambda: storage_client.bucket(bucket).get_blob(name), what=name)
        ae = AE(ae_title=CALLING)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 5
        plain = ae.associate("127.0.0.1", gw.receiver.port, ae_title=AE_TITLE)  # no TLS: no association
        assert not plain.is_established


def test_stopping_aborts_open_associations_and_keeps_what_was_acknowledged(tmp_path: Path, bucket: str,
                                                                           fake_gcs: Any) -> None:
    from pynetdicom import AE

    config = make_config(tmp_path / "spool", bucket)
    (_, first), (_, second) = samples.make_series(2)
    gateway = Gateway(config, inbox_factory=gcs_inbox_factory("no-such-bucket-gw", fake_gcs.url))
    gateway.start()
    try:
        ae = AE(ae_title=CALLING)
        assoc = ae.associate("127.0.0.1", gateway.receiver.port, ae_title=AE_TITLE,
                             contexts=storage_contexts([read_dataset(first)]))
        assert int(assoc.send_c_store(read_dataset(first)).Status) == 0
    finally:
        gateway.stop()  # while the association is open
    wait_for(lambda: assoc.is_aborted, timeout=10, what="the association aborted")
    recovered = Spool(tmp_path / "spool", max_bytes=2**30).recover()
    assert len(recovered) == 1  # the acknowledged instance waits for the next start


def test_hashed_object_names_keep_uids_out_of_the_logs(tmp_path: Path, bucket: str, fake_gcs: Any,
                                                         storage_client: Any) -> None:
    config = make_config(tmp_path / "spool", bucket, logs="logs:\n  object_names: hashed\n  hash_key: k3y\n")
    (uids, data), = samples.make_series(1)
    with running_gateway(config, gcs_inbox_factory(bucket, fake_gcs.url)) as gw, captured_logs() as logs:
        assert send(gw.receiver.port, [read_dataset(data)]) == [0]
        uploaded = wait_for(lambda: [l for l in logs() if l["message"] == "instance uploaded"], what="upload")
    text = "\n".join(json.dumps(line) for line in logs())
    assert uids.sop not in text and uids.study not in text and uids.series not in text
    assert uploaded[0]["object"].startswith("sha256:")
    assert storage_client.bucket(bucket).get_blob(f"in/{CALLING}/{uids.study}/{uids.series}/{uids.sop}.dcm")


def test_hashed_object_names_keep_uids_out_of_library_warnings(tmp_path: Path, bucket: str, fake_gcs: Any) -> None:
    """pydicom quotes a value it finds invalid (here a UID component with a leading zero) in its warning."""
    config = make_config(tmp_path / "spool", bucket, logs="logs:\n  object_names: hashed\n")
    (uids, data), = samples.make_series(1)
    ds = read_dataset(data)
    ds.SeriesInstanceUID = series = uids.series.rsplit(".", 1)[0] + ".012"
    with running_gateway(config, gcs_inbox_factory(bucket, fake_gcs.url)) as gw, captured_logs() as logs:
        assert send(gw.receiver.port, [ds]) == [0]
        wait_for(lambda: [line for line in logs() if line["message"] == "instance uploaded"], what="upload")
    warnings = [line["message"] for line in logs() if line["message"].startswith(("pydicom", "py.warnings"))]
    assert warnings and all("<UID>" in message for message in warnings)
    text = "\n".join(json.dumps(line) for line in logs())
    assert series not in text and uids.study not in text and uids.sop not in text


def test_a_sop_instance_uid_that_is_not_ascii_gets_a900(gateway: Any, bucket: str, storage_client: Any) -> None:
    (uids, data), = samples.make_series(1)
    ds = read_dataset(data)
    ds.SOPInstanceUID = sop_instance = uids.sop[:40] + ".\u00e9"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    ct = str(ds.SOPClassUID)
    with captured_logs() as logs:
        assert _raw_store(gateway.receiver.port, ct, ct, _dataset_bytes(buffer.getvalue()), sop_instance) == 0xA900
        refusals = _refusals(logs)
    assert len(refusals) == 1 and "SOPInstanceUID" in refusals[0]["reason"] and "not a valid UID" in refusals[0]["reason"]
    assert gateway.spool.stats().disk_bytes == 0 and _objects(storage_client, bucket) == {}
