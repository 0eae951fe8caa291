"""Orthanc's DICOMweb client (Debian's ``orthanc-dicomweb`` plugin) against the emulator's store.

Hospitals connect Orthanc to the Cloud Healthcare API over DICOMweb; its client
(C++, no code shared with dicomweb-client) sends STOW-RS, builds QIDO-RS queries
and parses WADO-RS multipart answers itself. Each test starts an Orthanc whose
DICOMweb server ``store`` is the test's store at its ``dicomWeb`` URL.
"""

from __future__ import annotations

from contextlib import ExitStack
from io import BytesIO
from pathlib import Path
from typing import Any, Iterator

import pydicom
import pytest

from localstack.samples import make_series, new_uid
from tests.orthanc import DICOMWEB_PLUGIN, Orthanc, running_orthanc

STUDY_UID, PATIENT_ID = "0020000D", "00100020"


@pytest.fixture
def orthanc_for(healthcare_emulator: Any, tmp_path: Path) -> Iterator[Any]:
    """``orthanc_for(store)``: an Orthanc with the DICOMweb plugin, knowing ``store`` as DICOMweb server ``store``."""
    with ExitStack() as running:

        def start(store: str) -> Orthanc:
            dicomweb = {"Enable": True, "Servers": {"store": [f"{healthcare_emulator.url}/v1/{store}/dicomWeb/"]}}
            return running.enter_context(running_orthanc(tmp_path, Plugins=[str(DICOMWEB_PLUGIN)], DicomWeb=dicomweb))

        yield start


def test_orthanc_stores_with_stow_and_finds_the_study_with_qido(orthanc_for: Any, store: str) -> None:
    study = new_uid()
    items = make_series(3, study_uid=study, modality="CT", patient_id="P-ORTHANC")
    orthanc = orthanc_for(store)
    ids = [orthanc.post("/instances", data)["ID"] for _, data in items]
    orthanc.post("/dicom-web/servers/store/stow", {"Resources": ids, "Synchronous": True})
    found = orthanc.post("/dicom-web/servers/store/qido", {"Uri": "/studies", "Arguments": {"PatientID": "P-ORTHANC"}})
    # Orthanc gives each answer's tags in its own form: {"Name", "vr", "Value" (a string)}
    assert [(answer[STUDY_UID]["Value"], answer[PATIENT_ID]["Value"]) for answer in found] == [(study, "P-ORTHANC")]
    instances = orthanc.post("/dicom-web/servers/store/qido", {"Uri": f"/studies/{study}/instances"})
    assert len(instances) == 3


def test_orthanc_retrieves_a_study_with_wado(orthanc_for: Any, loaded_store: tuple[str, str, list, tuple]) -> None:
    """Orthanc parses the emulator's multipart answer and stores each instance, bytes as imported."""
    store, study_a, items, _ = loaded_store
    orthanc = orthanc_for(store)
    orthanc.post("/dicom-web/servers/store/retrieve", {"Resources": [{"Study": study_a}], "Synchronous": True})
    received = {orthanc.get(f"/instances/{oid}/simplified-tags")["SOPInstanceUID"]: oid
                for oid in orthanc.get("/instances")}
    assert sorted(received) == sorted(uids.sop for uids, _ in items)
    for uids, data in items:
        sent = pydicom.dcmread(BytesIO(data))
        kept = pydicom.dcmread(BytesIO(orthanc.content(f"/instances/{received[uids.sop]}/file")))
        assert (kept.PixelData, kept.SeriesInstanceUID) == (sent.PixelData, sent.SeriesInstanceUID)

