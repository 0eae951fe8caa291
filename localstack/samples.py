"""Synthetic DICOM for tests, demos and benchmarks, built with pydicom (no downloads).

* :func:`make_instance` writes one small, valid DICOM Part 10 file (preamble,
  file meta, explicit VR little endian, 16-bit monochrome pixels);
* :func:`make_series` and :func:`make_study` build many at once with shared UIDs;
* :func:`bundled_bytes` / :func:`bundled_names` give the test files that ship
  inside the pydicom wheel (CT, MR, JPEG, RLE... never fetched from the network);
* :func:`with_new_uids` rewrites any DICOM file (e.g. a bundled one) under new
  Study/Series/SOP Instance UIDs, keeping its transfer syntax.

About 1,000 instances per second on one core.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pydicom
import pydicom.data
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

__all__ = [
    "InstanceUids",
    "SOP_CLASSES",
    "bundled_bytes",
    "bundled_names",
    "bundled_path",
    "make_instance",
    "make_series",
    "make_study",
    "new_uid",
    "with_new_uids",
]

#: SOP Class UID written for each modality; any other modality is Secondary Capture.
SOP_CLASSES: dict[str, str] = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "US": "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# Where the wheel keeps its test files (get_testdata_files() would also try downloads).
_BUNDLED_DIR = Path(pydicom.data.__file__).parent / "test_files"


class InstanceUids(NamedTuple):
    """The three UIDs that identify an instance in a DICOM store."""

    study: str
    series: str
    sop: str

    @property
    def path(self) -> str:
        """The DICOMweb path, also a line of an export filter file."""
        return f"/studies/{self.study}/series/{self.series}/instances/{self.sop}"


def new_uid() -> str:
    """A fresh, globally unique DICOM UID (pydicom's prefix, random suffix)."""
    return generate_uid()


def make_instance(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    *,
    patient_id: str = "PAT-0001",
    patient_name: str = "Synthetic^Patient",
    modality: str = "CT",
    rows: int = 8,
    cols: int = 8,
    instance_number: int = 1,
    series_number: int = 1,
    study_date: str = "20240101",
    accession_number: str = "",
    study_description: str = "Synthetic study",
    pixel_seed: int | None = None,
) -> bytes:
    """One DICOM Part 10 file (explicit VR little endian) as bytes.

    Pixels are 16-bit MONOCHROME2 (12 bits stored), a gradient shifted by
    ``pixel_seed`` (default: ``instance_number``), so equal arguments give equal bytes.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be at least 1, got {rows}x{cols}")
    sop_class = SOP_CLASSES.get(modality, _SECONDARY_CAPTURE)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.StudyTime = "120000"
    ds.AccessionNumber = accession_number
    ds.Modality = modality
    ds.StudyDescription = study_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    seed = instance_number if pixel_seed is None else pixel_seed
    pixels = (np.arange(rows * cols, dtype=np.uint32) * 37 + seed * 101) % 4096
    ds.PixelData = pixels.astype("<u2").tobytes()

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_series(
    n: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    **kwargs: Any,
) -> list[tuple[InstanceUids, bytes]]:
    """``n`` instances of one series (new UIDs unless given); ``kwargs`` go to :func:`make_instance`."""
    study = study_uid or new_uid()
    series = series_uid or new_uid()
    out = []
    for number in range(1, n + 1):
        uids = InstanceUids(study, series, new_uid())
        data = make_instance(study, series, uids.sop, instance_number=number, series_number=series_number, **kwargs)
        out.append((uids, data))
    return out


def make_study(
    series_count: int,
    instances_per_series: int,
    *,
    study_uid: str | None = None,
    **kwargs: Any,
) -> list[tuple[InstanceUids, bytes]]:
    """One study of ``series_count`` series with ``instances_per_series`` instances each."""
    study = study_uid or new_uid()
    out: list[tuple[InstanceUids, bytes]] = []
    for number in range(1, series_count + 1):
        out.extend(make_series(instances_per_series, study_uid=study, series_number=number, **kwargs))
    return out


def bundled_names() -> list[str]:
    """Names of the DICOM test files shipped inside the pydicom wheel (sorted)."""
    return sorted(path.name for path in _BUNDLED_DIR.glob("*.dcm"))


def bundled_path(name: str) -> str:
    """Local path of a pydicom bundled test file, e.g. ``"CT_small.dcm"``; never downloads."""
    path = pydicom.data.get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(
            f"{name!r} is not bundled with pydicom (downloads are disabled here); "
            f"pick one of bundled_names(), e.g. CT_small.dcm, MR_small.dcm, JPEG2000.dcm"
        )
    return str(path)


def bundled_bytes(name: str) -> bytes:
    """The bytes of a pydicom bundled test file."""
    with open(bundled_path(name), "rb") as handle:
        return handle.read()


def with_new_uids(
    data: bytes,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> tuple[InstanceUids, bytes]:
    """Rewrite a DICOM Part 10 file under new (or given) UIDs, keeping its transfer syntax and pixels."""
    ds = pydicom.dcmread(BytesIO(data))
    uids = InstanceUids(study_uid or new_uid(), series_uid or new_uid(), sop_uid or new_uid())
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uids
    ds.file_meta.MediaStorageSOPInstanceUID = uids.sop
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return uids, buffer.getvalue()
