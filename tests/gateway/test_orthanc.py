"""Interoperability with Orthanc (a PACS no one here wrote) as the modality: C-STORE, then storage commitment.

Orthanc sends a study to the gateway with ``"StorageCommitment": true``: it asks
for commitment (N-ACTION) after the C-STOREs and takes the report
(N-EVENT-REPORT) on the association the gateway opens to its DICOM port, as its
storage commitment SCU does with any archive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from localstack import samples
from localstack.ports import free_port
from tests.orthanc import AE_TITLE as ORTHANC_AE
from tests.orthanc import Orthanc, running_orthanc

from .helpers import AE_TITLE, gcs_inbox_factory, make_config, read_dataset, running_gateway, wait_for

pytestmark = pytest.mark.stack


@pytest.fixture
def gateway_port() -> int:
    return free_port()


@pytest.fixture
def orthanc(tmp_path: Path, gateway_port: int) -> Iterator[Orthanc]:
    """Orthanc knowing the gateway (started by the test at ``gateway_port``) as modality ``gateway``."""
    with running_orthanc(tmp_path, DicomModalities={"gateway": [AE_TITLE, "127.0.0.1", gateway_port]}) as server:
        yield server


def gateway_config(orthanc: Orthanc, port: int, tmp_path: Path, bucket: str) -> Any:
    """The gateway where Orthanc expects it, allowing Orthanc, sending commitment reports to its DICOM port."""
    dicom = (f"dicom:\n  ae_title: {AE_TITLE}\n  address: 127.0.0.1\n  port: {port}\n"
             f"  calling_ae_titles: [{ORTHANC_AE}]\n"
             f"commitment:\n  peers:\n    {ORTHANC_AE}: '127.0.0.1:{orthanc.dicom_port}'\n  wait_seconds: 30\n")
    return make_config(tmp_path / "spool", bucket, dicom=dicom)


def test_orthanc_stores_a_study_and_gets_it_committed(orthanc: Orthanc, gateway_port: int, tmp_path: Path,
                                                       bucket: str, fake_gcs: Any, storage_client: Any) -> None:
    study = samples.make_study(2, 2)
    ids = [orthanc.post("/instances", data)["ID"] for _, data in study]
    with running_gateway(gateway_config(orthanc, gateway_port, tmp_path, bucket),
                         gcs_inbox_factory(bucket, fake_gcs.url)):
        sent = orthanc.post("/modalities/gateway/store",
                            {"Resources": ids, "StorageCommitment": True, "Synchronous": True})
        assert (sent["InstancesCount"], sent["FailedInstancesCount"]) == (len(study), 0)
        transaction = sent["StorageCommitmentTransactionUID"]
        report = wait_for(lambda: _concluded(orthanc, transaction), timeout=60, what="Orthanc's commitment report")
    assert report["Status"] == "Success" and report["RemoteAET"] == AE_TITLE, report
    assert sorted(item["SOPInstanceUID"] for item in report["Success"]) == sorted(uids.sop for uids, _ in study)
    stored = {blob.name.rsplit("/", 1)[-1] for blob in storage_client.list_blobs(bucket)}
    assert stored == {f"{uids.sop}.dcm" for uids, _ in study}


def test_orthanc_is_told_which_instance_the_gateway_never_received(orthanc: Orthanc, gateway_port: int,
                                                                    tmp_path: Path, bucket: str, fake_gcs: Any) -> None:
    """Orthanc asks about an instance it did not send (its own storage-commitment route): Failure, 0x0112."""
    [(uids, data)] = samples.make_series(1)
    with running_gateway(gateway_config(orthanc, gateway_port, tmp_path, bucket),
                         gcs_inbox_factory(bucket, fake_gcs.url)):
        asked = orthanc.post("/modalities/gateway/storage-commitment",
                             {"DicomInstances": [[str(read_dataset(data).SOPClassUID), uids.sop]]})
        report = wait_for(lambda: _concluded(orthanc, asked["ID"]), timeout=60, what="Orthanc's commitment report")
    assert report["Status"] == "Failure", report
    assert [(item["SOPInstanceUID"], item["FailureReason"]) for item in report["Failures"]] == [(uids.sop, 0x0112)]


def _concluded(orthanc: Orthanc, transaction: str) -> Any:
    report = orthanc.get(f"/storage-commitment/{transaction}")
    return None if report["Status"] == "Pending" else report
