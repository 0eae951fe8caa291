"""Storage Commitment Push Model: a pynetdicom modality asks (N-ACTION) and takes the report (N-EVENT-REPORT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from gateway.commitment import NO_SUCH_INSTANCE, PROCESSING_FAILURE
from gateway.config import ConfigError, parse
from localstack import samples
from localstack.modality import commitment_reports, request_commitment

from .helpers import (
    AE_TITLE,
    CALLING,
    captured_logs,
    config_text,
    gcs_inbox_factory,
    make_config,
    read_dataset,
    running_gateway,
    send,
    wait_for,
)

pytestmark = pytest.mark.stack
OTHER = "MODALITY2"  # allowed to associate, with no commitment.peers entry


def commitment_config(spool_dir: Path, bucket: str, port: int, wait_seconds: float = 30, **sections: str) -> Any:
    dicom = (f"dicom:\n  ae_title: {AE_TITLE}\n  address: 127.0.0.1\n  port: 0\n"
             f"  calling_ae_titles: [{CALLING}, {OTHER}]\n")
    commitment = f"commitment:\n  peers:\n    {CALLING}: '127.0.0.1:{port}'\n  wait_seconds: {wait_seconds}\n"
    return make_config(spool_dir, bucket, dicom=dicom + commitment, **sections)


def ask(port: int, references: list[tuple[str, str]], *, calling: str = CALLING) -> tuple[int, str]:
    """The modality's N-ACTION (request storage commitment): the status answered, and the Transaction UID."""
    transaction = generate_uid()
    return request_commitment("127.0.0.1", port, AE_TITLE, calling, references, transaction), transaction


def references_of(items: list[tuple[Any, bytes]]) -> list[tuple[str, str]]:
    return [(str(read_dataset(data).SOPClassUID), uids.sop) for uids, data in items]


def test_instances_are_committed_once_in_the_bucket_and_unknown_ones_are_named(
        tmp_path: Path, bucket: str, fake_gcs: Any, storage_client: Any) -> None:
    study = samples.make_series(3)
    never_sent = ("1.2.840.10008.5.1.4.1.1.2", generate_uid())
    with commitment_reports(CALLING) as (modality_port, reports), captured_logs() as logs, \
            running_gateway(commitment_config(tmp_path / "spool", bucket, modality_port),
                            gcs_inbox_factory(bucket, fake_gcs.url)) as gw:
        assert send(gw.receiver.port, [read_dataset(data) for _, data in study]) == [0, 0, 0]
        status, transaction = ask(gw.receiver.port, [*references_of(study), never_sent])
        assert status == 0x0000
        event_type, caller, report = reports.get(timeout=30)
        uploaded = {blob.name.rsplit("/", 1)[-1] for blob in storage_client.list_blobs(bucket)}
        reported = wait_for(lambda: [l for l in logs() if l["message"] == "storage commitment reported"], what="log")
    assert (event_type, caller, report.TransactionUID) == (2, AE_TITLE, transaction)
    committed = {item.ReferencedSOPInstanceUID for item in report.ReferencedSOPSequence}
    assert committed == {uids.sop for uids, _ in study} and {f"{uid}.dcm" for uid in committed} <= uploaded
    [failed] = report.FailedSOPSequence
    assert (failed.ReferencedSOPInstanceUID, failed.FailureReason) == (never_sent[1], NO_SUCH_INSTANCE)
    assert (reported[0]["committed"], reported[0]["failed"], reported[0]["notReceived"]) == (3, 1, 1)


def test_an_instance_still_in_the_spool_when_the_wait_ends_is_reported_failed(tmp_path: Path, fake_gcs: Any) -> None:
    """Cloud Storage unreachable (the bucket missing): spooled, acknowledged, never committed."""
    [(uids, data)] = samples.make_series(1)
    with commitment_reports(CALLING) as (modality_port, reports), \
            running_gateway(commitment_config(tmp_path / "spool", "no-such-bucket-gw", modality_port, wait_seconds=1),
                            gcs_inbox_factory("no-such-bucket-gw", fake_gcs.url)) as gw:
        assert send(gw.receiver.port, [read_dataset(data)]) == [0]
        assert ask(gw.receiver.port, references_of([(uids, data)]))[0] == 0x0000
        event_type, _, report = reports.get(timeout=30)
        assert gw.spool.stats().pending == 1, "it stays in the spool, to be uploaded later"
    assert event_type == 2 and "ReferencedSOPSequence" not in report
    assert [(item.ReferencedSOPInstanceUID, item.FailureReason) for item in report.FailedSOPSequence] == \
        [(uids.sop, PROCESSING_FAILURE)]


def test_refusals_and_all_committed_gives_event_type_1(
        tmp_path: Path, bucket: str, fake_gcs: Any) -> None:
    study = samples.make_series(2)
    with commitment_reports(CALLING) as (modality_port, reports), captured_logs() as logs, \
            running_gateway(commitment_config(tmp_path / "spool", bucket, modality_port),
                            gcs_inbox_factory(bucket, fake_gcs.url)) as gw:
        assert send(gw.receiver.port, [read_dataset(data) for _, data in study]) == [0, 0]
        assert ask(gw.receiver.port, references_of(study), calling=OTHER)[0] == 0x0110
        assert ask(gw.receiver.port, [])[0] == 0x0120, "a request naming no instance"
        refused = [l for l in logs() if l["message"] == "storage commitment refused"]
        assert ask(gw.receiver.port, references_of(study))[0] == 0x0000
        event_type, _, report = reports.get(timeout=30)
    assert len(refused) == 2 and "no commitment.peers entry" in refused[0]["reason"]
    assert refused[0]["callingAETitle"] == OTHER and "Referenced SOP Sequence" in refused[1]["reason"]
    assert event_type == 1 and len(report.ReferencedSOPSequence) == 2 and "FailedSOPSequence" not in report


def test_commitment_config_problems_name_the_line(tmp_path: Path) -> None:
    dicom = "dicom:\n  ae_title: GW\n  calling_ae_titles: [CT1]\n"
    bad = ("commitment:\n  peers:\n    CT1: 10.0.0.1\n    CT2: '10.0.0.2:104'\n    CT1X: 'host:99999'\n"
           "  wait_seconds: 0\n")
    with pytest.raises(ConfigError) as caught:
        parse(config_text(tmp_path, "bkt", dicom=dicom + bad), "gw.yaml", {})
    problems = caught.value.problems
    assert "gw.yaml:9: wait_seconds must be between 1 and 86400, got 0" in problems
    assert any(p.startswith("gw.yaml:6: commitment peer CT1: '10.0.0.1' is not HOST:PORT") for p in problems)
    assert any(p.startswith("gw.yaml:7: commitment peer CT2 is not in dicom.calling_ae_titles") for p in problems)
    assert any(p.startswith("gw.yaml:8: commitment peer CT1X is not in dicom.calling_ae_titles") for p in problems)
    assert any(p.startswith("gw.yaml:8: commitment peer CT1X: 'host:99999' is not HOST:PORT") for p in problems)
    with pytest.raises(ConfigError, match="'commitment' needs 'peers'"):
        parse(config_text(tmp_path, "bkt", dicom=dicom + "commitment:\n  wait_seconds: 5\n"), "gw.yaml", {})
    config = parse(config_text(tmp_path, "bkt", dicom=dicom + "commitment:\n  peers: {CT1: 'ct.example:104'}\n"),
                   "gw.yaml", {})
    assert config.commitment is not None and config.commitment.peers == {"CT1": ("ct.example", 104)}
    assert config.commitment.wait_seconds == 600


def test_check_summarises_commitment_peers_and_additional_classes(tmp_path: Path, capsys: Any) -> None:
    from gateway.__main__ import main

    dicom = "dicom:\n  ae_title: GW\n  calling_ae_titles: [CT1]\n  additional_sop_classes: ['1.3.12.2.1107.5.9.1']\n"
    path = tmp_path / "gw.yaml"
    path.write_text(config_text(tmp_path, "bkt", dicom=dicom + "commitment:\n  peers: {CT1: 'ct.example:104'}\n"))
    assert main(["--config", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "also receives SOP classes 1.3.12.2.1107.5.9.1" in out
    assert "storage commitment reports to CT1 at ct.example:104 (waiting at most 600 s)" in out


def test_instances_uploaded_before_a_restart_are_still_committed(
        tmp_path: Path, bucket: str, fake_gcs: Any) -> None:
    """Their spool segments are gone (a segment per instance here), so only the journal remembers them."""
    *study, last = samples.make_series(3)
    spool = tmp_path / "spool"
    small_segments = f"spool:\n  directory: {spool}\n  max_megabytes: 64\n  segment_megabytes: 0.001\n"
    with commitment_reports(CALLING) as (modality_port, reports):
        config = commitment_config(spool, bucket, modality_port, spool=small_segments)
        with running_gateway(config, gcs_inbox_factory(bucket, fake_gcs.url)) as gw:
            assert send(gw.receiver.port, [read_dataset(data) for _, data in [*study, last]]) == [0, 0, 0]
            wait_for(lambda: gw.spool.stats().pending == 0, what="uploads")
        assert len(list(spool.glob("*.seg"))) <= 1, "only the last instance's segment may be left"
        with captured_logs() as logs, running_gateway(config, gcs_inbox_factory(bucket, fake_gcs.url)) as restarted:
            assert ask(restarted.receiver.port, references_of(study))[0] == 0x0000
            event_type, _, report = reports.get(timeout=30)
            [journal] = [line for line in logs() if line["message"] == "storage commitment journal read"]
    assert journal["uploaded"] == 3
    assert event_type == 1 and "FailedSOPSequence" not in report
    assert {item.ReferencedSOPInstanceUID for item in report.ReferencedSOPSequence} == {uids.sop for uids, _ in study}
