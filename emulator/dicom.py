"""DICOM with pydicom: parse an imported file, transcode, render frames.

Everything here raises :class:`DicomError` with a message fit for a log line
naming the file or instance; nothing else escapes for bad input.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian

from emulator.dicomstore import Instance, digest
from handlers.failures.header import NotDicom
from handlers.failures.header import inspect as inspect_header

EXPLICIT_VR_LITTLE_ENDIAN = str(ExplicitVRLittleEndian)
# Value representations kept out of the searchable attributes (bulk data).
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
REQUIRED_UIDS = (
    ("StudyInstanceUID", "(0020,000D)"),
    ("SeriesInstanceUID", "(0020,000E)"),
    ("SOPInstanceUID", "(0008,0018)"),
)


class DicomError(ValueError):
    """A file or instance the operation cannot use; the message says why."""


def read(data: bytes) -> Dataset:
    """Parse a DICOM Part 10 file (preamble and ``DICM`` required, as ``force=False``)."""
    try:
        return pydicom.dcmread(BytesIO(data), force=False)
    except Exception as exc:  # pydicom raises many types for bad input
        raise DicomError(f"not a DICOM file: {exc}") from None


def parse_instance(data: bytes) -> Instance:
    """An :class:`Instance` from a file's bytes, or :class:`DicomError` naming what is missing."""
    ds = read(data)
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not transfer_syntax:
        raise DicomError("not a valid DICOM file: the file meta lacks TransferSyntaxUID (0002,0010)")
    truncation = _truncation(data)
    if truncation:
        raise DicomError(f"not a valid DICOM file: truncated: {truncation}")
    uids = []
    for keyword, tag in REQUIRED_UIDS:
        try:
            value = ds.get(keyword)
        except Exception as exc:
            raise DicomError(f"cannot read {keyword} {tag}: {exc}") from None
        if not value:
            raise DicomError(
                f"DICOM file lacks {keyword} {tag}: every instance needs Study, Series and SOP Instance UIDs"
            )
        uids.append(str(value))
    study, series, sop = uids
    return Instance(study, series, sop, data, str(transfer_syntax), attributes(ds), digest(data))


def _truncation(data: bytes) -> str:
    """Why the file is truncated, or ''. pydicom reads a short last value without complaint; the walk does not.

    Only truncation counts here: a file pydicom reads and the walker finds odd
    in another way is imported as before.
    """
    try:
        return inspect_header(data).truncated
    except NotDicom:
        return ""


def attributes(ds: Dataset) -> dict[str, Any]:
    """The DICOM JSON model (PS3.18 F.2) of ``ds``'s non-bulk elements, keyed by 8-hex-digit tag.

    An element whose value cannot be decoded (e.g. ``IS`` "1A") is left out of
    the searchable attributes; the instance itself is kept as received.
    """
    out: dict[str, Any] = {}
    try:
        tags = list(ds.keys())
    except Exception as exc:
        raise DicomError(f"cannot read the DICOM attributes: {exc}") from None
    for tag in tags:
        try:
            element = ds[tag]
            if element.VR in BULK_VRS or element.tag.group == 0x7FE0:
                continue
            out[f"{element.tag:08X}"] = element.to_json_dict(None, 1 << 20)
        except Exception:
            continue
    return out


def transfer_syntax_name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def to_explicit_vr_little_endian(instance: Instance) -> bytes:
    """The instance transcoded to explicit VR little endian (as is when already so).

    Compressed sources are decompressed when pydicom has a decoder for them
    (RLE always; JPEG family only with optional plugins), else DicomError.
    """
    if instance.transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        return instance.data
    ds = read(instance.data)
    syntax = UID(instance.transfer_syntax)
    try:
        if syntax.is_compressed:
            ds.decompress(generate_instance_uid=False)
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            return buffer.getvalue()
        if not syntax.is_little_endian and "PixelData" in ds:
            pixels = ds.pixel_array
            if int(ds.get("SamplesPerPixel", 1)) > 1:
                ds.PlanarConfiguration = 0
            ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buffer = BytesIO()
        pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=True, force_encoding=True)
        return buffer.getvalue()
    except Exception as exc:
        raise DicomError(
            f"cannot transcode from {transfer_syntax_name(instance.transfer_syntax)} to explicit VR little endian: "
            f"{str(exc).splitlines()[0]}; export or retrieve it with transfer-syntax=* instead"
        ) from None


def frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def raw_frames(instance: Instance) -> list[bytes]:
    """The pixel data as stored, one bytes object per frame (encapsulated frames unwrapped)."""
    ds = read(instance.data)
    if "PixelData" not in ds:
        raise DicomError("the instance has no pixel data (PixelData (7FE0,0010)); export it as application/dicom")
    count = frame_count(ds)
    data = ds.PixelData
    try:
        if UID(instance.transfer_syntax).is_encapsulated:
            return list(pydicom.encaps.generate_frames(data, number_of_frames=count))
    except Exception as exc:
        raise DicomError(f"cannot split the encapsulated pixel data into frames: {exc}") from None
    if count == 1:
        return [data]
    size = len(data) // count
    if int(ds.get("BitsAllocated", 8)) == 1 or size * count > len(data):
        raise DicomError("cannot split the native pixel data into frames (1-bit or short pixel data)")
    return [data[i * size : (i + 1) * size] for i in range(count)]


def _to_uint8(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def rendered_frames(instance: Instance) -> list[np.ndarray]:
    """8-bit frames for a consumer image: (rows, cols) grayscale or (rows, cols, 3) RGB.

    Grayscale: modality LUT, then the VOI LUT or window when the instance has one,
    then min-max scaling to 0-255 (inverted for MONOCHROME1). Colour: palette
    lookup, or RGB (pydicom converts YBR), scaled to 8 bits.
    """
    ds = read(instance.data)
    if "PixelData" not in ds:
        raise DicomError("the instance has no pixel data (PixelData (7FE0,0010)); export it as application/dicom")
    try:
        pixels = pixel_array(ds, as_rgb=True)  # YBR colour arrives as RGB
    except Exception as exc:
        raise DicomError(
            f"cannot decode pixel data stored as {transfer_syntax_name(instance.transfer_syntax)}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    count = frame_count(ds)
    frames = list(pixels) if count > 1 else [pixels]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    out = []
    try:
        for frame in frames:
            if photometric in ("MONOCHROME1", "MONOCHROME2"):
                values = apply_modality_lut(frame, ds)
                if "WindowCenter" in ds or "VOILUTSequence" in ds:
                    values = apply_voi_lut(values, ds)
                gray = _to_uint8(values)
                out.append(255 - gray if photometric == "MONOCHROME1" else gray)
            elif photometric == "PALETTE COLOR":
                out.append(_to_uint8(apply_color_lut(frame, ds)))
            elif photometric == "RGB" or photometric.startswith("YBR"):
                bits = int(ds.get("BitsStored", 8))
                out.append((frame >> (bits - 8)).astype(np.uint8) if bits > 8 else frame.astype(np.uint8))
            else:
                raise DicomError(f"photometric interpretation {photometric} cannot be rendered as an image")
    except DicomError:
        raise
    except Exception as exc:
        raise DicomError(f"cannot render the pixel data ({photometric}): {exc}") from None
    return out
