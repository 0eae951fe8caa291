"""Interoperability with Orthanc (a PACS no one here wrote) as the modality: C-STORE, then storage commitment.

Orthanc (Debian package ``orthanc``; ``make test`` and ``.ci/run`` install it when
missing) sends a study to the gateway with ``"StorageCommitment": true``: it
asks for commitment (N-ACTION) after the C-STOREs and takes the report
(N-EVENT-REPORT) on the association the gateway opens to its DICOM port, as its
storage commitment SCU does with any archive.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from localstack import samples
from localstack.ports import free_ports

from .helpers import AE_TITLE, gcs_inbox_factory, make_config, read_dataset, running_gateway, wait_for

pytestmark = pytest.mark.stack
ORTHANC_AE = "ORTHANC"


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: its REST API, its DICOM port, and the port where it expects the gateway."""

    url: str
    dicom_port: int
    gateway_port: int

    def post(self, path: str, body: Any) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body)
        response = requests.post(f"{self.url}{path}", data=data, timeout=60)
        assert response.ok, f"Orthanc {path}: {response.status_code} {response.text}"
        return response.json()

    def get(self, path: str) -> Any:
        response = requests.get(f"{self.url}{path}", timeout=10)
        assert response.ok, f"Orthanc {path}: {response.status_code} {response.text}"
        return response.json()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc on free ports, knowing the gateway (to be started at ``gateway_port``) as modality ``gateway``."""
    binary = shutil.which("Orthanc")
    if binary is None:
        pytest.fail("Orthanc not found: apt-get install -y orthanc (make test installs it when missing)")
    http_port, dicom_port, gateway_port = free_ports(3)
    config = {"Name": "modality", "StorageDirectory": str(tmp_path / "orthanc"),
              "IndexDirectory": str(tmp_path / "orthanc"), "DicomAet": ORTHANC_AE, "DicomPort": dicom_port,
              "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "Plugins": [], "DicomModalities": {"gateway": [AE_TITLE, "127.0.0.1", gateway_port]}}
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    log = open(tmp_path / "orthanc.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen([binary, str(tmp_path / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(f"http://127.0.0.1:{http_port}", dicom_port, gateway_port)
    try:
        wait_for(lambda: _answers(server.url), timeout=30, what="Orthanc's REST API")
        yield server
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def gateway_config(orthanc: Orthanc, tmp_path: Path, bucket: str) -> Any:
    """The gateway where Orthanc expects it, allowing Orthanc, sending commitment reports to its DICOM port."""
    dicom = (f"dicom:\n  ae_title: {AE_TITLE}\n  address: 127.0.0.1\n  port: {orthanc.gateway_port}\n"
             f"  calling_ae_titles: [{ORTHANC_AE}]\n"
             f"commitment:\n  peers:\n    {ORTHANC_AE}: '127.0.0.1:{orthanc.dicom_port}'\n  wait_seconds: 30\n")
    return make_config(tmp_path / "spool", bucket, dicom=dicom)


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/system", timeout=2).ok
    except requests.ConnectionError:
        return False


def test_orthanc_stores_a_study_and_gets_it_committed(orthanc: Orthanc, tmp_path: Path, bucket: str,
                                                       fake_gcs: Any, storage_client: Any) -> None:
    study = samples.make_study(2, 2)
    ids = [orthanc.post("/instances", data)["ID"] for _, data in study]
    with running_gateway(gateway_config(orthanc, tmp_path, bucket), gcs_inbox_factory(bucket, fake_gcs.url)):
        sent = orthanc.post("/modalities/gateway/store",
                            {"Resources": ids, "StorageCommitment": True, "Synchronous": True})
        assert (sent["InstancesCount"], sent["FailedInstancesCount"]) == (len(study), 0)
        transaction = sent["StorageCommitmentTransactionUID"]
        report = wait_for(lambda: _concluded(orthanc, transaction), timeout=60, what="Orthanc's commitment report")
    assert report["Status"] == "Success" and report["RemoteAET"] == AE_TITLE, report
    assert sorted(item["SOPInstanceUID"] for item in report["Success"]) == sorted(uids.sop for uids, _ in study)
    stored = {blob.name.rsplit("/", 1)[-1] for blob in storage_client.list_blobs(bucket)}
    assert stored == {f"{uids.sop}.dcm" for uids, _ in study}


def test_orthanc_is_told_which_instance_the_gateway_never_received(orthanc: Orthanc, tmp_path: Path, bucket: str,
                                                                    fake_gcs: Any) -> None:
    """Orthanc asks about an instance it did not send (its own storage-commitment route): Failure, 0x0112."""
    [(uids, data)] = samples.make_series(1)
    with running_gateway(gateway_config(orthanc, tmp_path, bucket), gcs_inbox_factory(bucket, fake_gcs.url)):
        asked = orthanc.post("/modalities/gateway/storage-commitment",
                             {"DicomInstances": [[str(read_dataset(data).SOPClassUID), uids.sop]]})
        report = wait_for(lambda: _concluded(orthanc, asked["ID"]), timeout=60, what="Orthanc's commitment report")
    assert report["Status"] == "Failure", report
    assert [(item["SOPInstanceUID"], item["FailureReason"]) for item in report["Failures"]] == [(uids.sop, 0x0112)]


def _concluded(orthanc: Orthanc, transaction: str) -> Any:
    report = orthanc.get(f"/storage-commitment/{transaction}")
    return None if report["Status"] == "Pending" else report

