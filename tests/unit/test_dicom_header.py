"""The pydicom-free header walker: UIDs and truncation, on whole files and on the first bytes of an object."""

import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pydicom.data
import pytest

from handlers.failures.header import NotDicom, inspect
from localstack.samples import make_instance, new_uid

TRULY_TRUNCATED = {"MR_truncated.dcm", "rtplan_truncated.dcm"}
# The files shipped inside pydicom (get_testdata_files would also try to download others).
TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


def get_testdata_file(name: str) -> str:
    return str(TEST_FILES / name)


def _readable_by_pydicom(path: str) -> pydicom.Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
            ds.get("StudyInstanceUID")
            return ds
        except Exception:
            return None


READABLE = [str(p) for p in sorted(TEST_FILES.glob("*.dcm")) if _readable_by_pydicom(str(p)) is not None]


@pytest.mark.parametrize("path", READABLE, ids=lambda p: p.rsplit("/", 1)[-1])
def test_agrees_with_pydicom_on_its_test_files(path):
    """Every file pydicom reads (files pydicom itself refuses say nothing about the walker)."""
    ds = _readable_by_pydicom(path)
    data = open(path, "rb").read()
    name = path.rsplit("/", 1)[-1]
    try:
        header = inspect(data)
    except NotDicom:
        assert "TransferSyntaxUID" not in ds.file_meta, f"{name}: refused a file pydicom reads"
        return
    if name in TRULY_TRUNCATED:
        assert header.truncated, f"{name} is truncated and pydicom reads it anyway"
        return
    assert not header.truncated and header.complete, f"{name}: {header.truncated}"
    expected = tuple(str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    if all(expected):
        assert header.uids == expected


def test_a_prefix_with_the_object_size_gives_uids_and_detects_a_short_pixel_data():
    study, series, sop = new_uid(), new_uid(), new_uid()
    data = make_instance(study, series, sop, rows=128, cols=128)
    prefix = inspect(data[:2048], total_size=len(data))
    assert prefix.uids == (study, series, sop) and not prefix.truncated and not prefix.complete
    cut = data[: len(data) - 100]
    assert "(7FE0,0010)" in inspect(cut[:2048], total_size=len(cut)).truncated
    assert inspect(cut).truncated


@pytest.mark.parametrize("data, fragment", [
    (b"", "empty"),
    (b"x" * 100, "shorter than the 128-byte preamble"),
    (b"radiology report, not DICOM\n" * 20, "no 'DICM' marker"),
])
def test_files_that_are_no_dicom_at_all(data, fragment):
    with pytest.raises(NotDicom, match=fragment):
        inspect(data)


def test_implicit_vr_under_an_explicit_transfer_syntax_is_read_as_pydicom_reads_it():
    header = inspect(open(get_testdata_file("SC_rgb_jpeg.dcm"), "rb").read())
    assert header.complete and not header.truncated and header.sop.startswith("1.2.826.0.1.3680043.8.498")


def test_deflated_and_big_endian_files():
    for name in ("image_dfl.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"):
        data = open(get_testdata_file(name), "rb").read()
        ds = pydicom.dcmread(BytesIO(data))
        assert inspect(data).sop == ds.SOPInstanceUID, name
