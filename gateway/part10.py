"""DICOM Part 10 framing of a received dataset, and the few header values the object name needs.

The dataset bytes are kept exactly as received; only the file meta information
(group 0002, always explicit VR little endian, PS3.10 7.1) is written in front.
It is encoded here rather than with pydicom's writer because it runs once per
instance on the acknowledgement path and pydicom's generic writer costs about
25 times more; ``tests/gateway/test_units.py`` checks the bytes equal pydicom's.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from typing import BinaryIO

__all__ = ["file_meta", "header_values"]

PREAMBLE = b"\x00" * 128 + b"DICM"
_PIXEL_DATA = 0x7FE00010
_HEADER_KEYWORDS = ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality", "StudyDate")


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "  # UIDs pad with NUL, text with a space (PS3.5 6.2)
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, ``DICM`` and the file meta information group for one received instance."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    body = b"".join((
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", sop_class.encode("ascii")),
        _element(0x0003, b"UI", sop_instance.encode("ascii")),
        _element(0x0010, b"UI", transfer_syntax.encode("ascii")),
        _element(0x0012, b"UI", str(PYNETDICOM_IMPLEMENTATION_UID).encode("ascii")),
        _element(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")),
        _element(0x0016, b"AE", source_ae.encode("ascii")),
    ))
    return PREAMBLE + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body


def header_values(stream: BinaryIO, transfer_syntax: str) -> dict[str, str]:
    """SOP Class/Instance, Study and Series UIDs, Modality and StudyDate of an encoded dataset.

    Every element before the pixel data is parsed (pydicom), so a dataset that
    does not decode raises here; pixel data is not read, nor copied.
    """
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    syntax = UID(transfer_syntax)
    stream.seek(0)
    if syntax.is_deflated:
        stream = BytesIO(zlib.decompress(stream.read(), -zlib.MAX_WBITS))
    parsed = read_dataset(stream, syntax.is_implicit_VR, syntax.is_little_endian,
                          stop_when=lambda tag, vr, length: tag >= _PIXEL_DATA)
    values = {}
    for keyword in _HEADER_KEYWORDS:
        value = parsed.get(keyword)
        if value is not None and str(value).strip():
            values[keyword] = str(value).strip()
    return values
