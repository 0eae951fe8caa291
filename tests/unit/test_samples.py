"""localstack.samples: synthetic DICOM that real parsers accept."""

import time
from io import BytesIO

import pydicom
import pytest

from localstack.samples import (
    InstanceUids,
    bundled_bytes,
    bundled_names,
    bundled_path,
    make_instance,
    make_series,
    make_study,
    new_uid,
    with_new_uids,
)


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(BytesIO(data), force=False)


def test_instance_is_part10_explicit_vr_little_endian_with_pixels():
    study, series, sop = new_uid(), new_uid(), new_uid()
    data = make_instance(study, series, sop, patient_id="P-42", modality="MR", rows=4, cols=6)
    assert data[128:132] == b"DICM"
    ds = read(data)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.file_meta.MediaStorageSOPInstanceUID == sop
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (study, series, sop)
    assert ds.PatientID == "P-42"
    assert ds.Modality == "MR"
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert ds.pixel_array.shape == (4, 6)
    assert ds.pixel_array.max() < 4096


def test_same_arguments_give_same_bytes_and_pixel_seed_changes_them():
    uids = (new_uid(), new_uid(), new_uid())
    assert make_instance(*uids) == make_instance(*uids)
    assert make_instance(*uids, pixel_seed=7) != make_instance(*uids)


def test_unknown_modality_is_secondary_capture():
    ds = read(make_instance(new_uid(), new_uid(), new_uid(), modality="OT"))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"


def test_bad_size_is_refused():
    with pytest.raises(ValueError, match="rows and cols"):
        make_instance(new_uid(), new_uid(), new_uid(), rows=0)


def test_new_uid_is_unique_and_valid():
    uids = {new_uid() for _ in range(1000)}
    assert len(uids) == 1000
    assert all(pydicom.uid.UID(u).is_valid for u in uids)


def test_series_shares_study_and_series_uids():
    series = make_series(5, patient_id="P-1")
    uids = [u for u, _ in series]
    assert len({u.study for u in uids}) == 1
    assert len({u.series for u in uids}) == 1
    assert len({u.sop for u in uids}) == 5
    numbers = [read(data).InstanceNumber for _, data in series]
    assert numbers == [1, 2, 3, 4, 5]
    first_uids, first = series[0]
    ds = read(first)
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == tuple(first_uids)


def test_study_has_distinct_series():
    study_uid = new_uid()
    study = make_study(3, 2, study_uid=study_uid)
    assert len(study) == 6
    assert {u.study for u, _ in study} == {study_uid}
    assert len({u.series for u, _ in study}) == 3


def test_path_is_a_filter_file_line():
    uids = InstanceUids("1.2", "3.4", "5.6")
    assert uids.path == "/studies/1.2/series/3.4/instances/5.6"


def test_bundled_files_are_local_only():
    names = bundled_names()
    assert "CT_small.dcm" in names and "JPEG2000.dcm" in names
    assert read(bundled_bytes("CT_small.dcm")).Modality == "CT"
    with pytest.raises(FileNotFoundError, match="not bundled"):
        bundled_path("no-such-file.dcm")


def test_with_new_uids_keeps_transfer_syntax():
    uids, data = with_new_uids(bundled_bytes("JPEG2000.dcm"), study_uid="1.2.3")
    ds = read(data)
    assert uids.study == "1.2.3"
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == tuple(uids)
    assert ds.file_meta.MediaStorageSOPInstanceUID == uids.sop
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"


def test_a_thousand_instances_take_seconds_not_minutes():
    started = time.perf_counter()
    make_series(1000)
    assert time.perf_counter() - started < 15
