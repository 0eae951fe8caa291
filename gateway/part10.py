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

__all__ = ["Undecodable", "file_meta", "header_values"]

PREAMBLE = b"\x00" * 128 + b"DICM"
_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
# Explicit VRs with a reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG_LENGTH_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
                               b"UV"))
_HEADER_KEYWORDS = ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality", "StudyDate")


class Undecodable(ValueError):
    """The dataset's bytes are not a whole dataset in the transfer syntax they came with."""


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


def header_values(stream: BytesIO, transfer_syntax: str) -> dict[str, str]:
    """SOP Class/Instance, Study and Series UIDs, Modality and StudyDate of an encoded dataset.

    Every element before the pixel data is parsed (pydicom); the pixel data and
    what follows are only walked, element and item headers, never read nor
    copied. A dataset that does not decode raises :class:`Undecodable` or
    pydicom's errors: one whose bytes are not in the transfer syntax's VR
    encoding (implicit VR on an explicit VR context, or the reverse), or one cut
    short (an element or item longer than what is left, a sequence or
    encapsulated pixel data never delimited, a partial element header at the end).
    """
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID

    syntax = UID(transfer_syntax)
    stream.seek(0)
    if syntax.is_deflated:
        stream = BytesIO(zlib.decompress(stream.read(), -zlib.MAX_WBITS))
    size = stream.seek(0, 2)
    stream.seek(0)
    _check_vr_encoding(stream.read(6), syntax.is_implicit_VR)
    stream.seek(0)

    at_pixel_data = False

    def stop_when(tag: int, vr: str | None, length: int) -> bool:
        nonlocal at_pixel_data
        value = stream.tell()
        if length != _UNDEFINED and value + length > size:
            raise Undecodable(f"element {_tag(tag)} is cut short: {length} bytes long, {size - value} left")
        at_pixel_data = tag >= _PIXEL_DATA
        return at_pixel_data

    reads = _LastShortRead(stream)
    parsed = read_dataset(reads, syntax.is_implicit_VR, syntax.is_little_endian, stop_when=stop_when)
    if at_pixel_data:  # pydicom stopped at its header: walk it and what follows
        with stream.getbuffer() as data:  # not copied
            _Walker(data, "<" if syntax.is_little_endian else ">").elements(stream.tell(), size,
                                                                            syntax.is_implicit_VR)
    elif reads.at is not None and reads.at < size:
        # pydicom ends quietly when the next element header is partial (1 to 7 bytes): its last read fell short.
        raise Undecodable(f"{size - reads.at} bytes at the end are not an element: the dataset is cut short")
    values = {}
    for keyword in _HEADER_KEYWORDS:
        value = parsed.get(keyword)
        if value is not None and str(value).strip():
            values[keyword] = str(value).strip()
    return values


class _LastShortRead:
    """A stream for pydicom that notes where its last read came back shorter than asked (where pydicom stopped)."""

    def __init__(self, stream: BytesIO) -> None:
        self._stream = stream
        self.seek = stream.seek
        self.tell = stream.tell
        self.at: int | None = None

    def read(self, size: int = -1) -> bytes:
        start = self._stream.tell()
        data = self._stream.read(size)
        if 0 <= size and len(data) < size:
            self.at = start
        return data


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _check_vr_encoding(start: bytes, implicit: bool) -> None:
    """Raise :class:`Undecodable` if the first element is not in the transfer syntax's VR encoding.

    Explicit VR puts two upper-case letters after the tag, implicit VR a length:
    the test pydicom makes (it then reads the dataset the other way, with a warning).
    """
    if len(start) < 6:
        return
    explicit = all(0x41 <= byte <= 0x5A for byte in start[4:6])
    if explicit == implicit:
        found, expected = ("explicit", "implicit") if explicit else ("implicit", "explicit")
        raise Undecodable(f"the dataset is encoded in {found} VR, but the presentation context's transfer syntax "
                          f"is {expected} VR")


class _Walker:
    """Element and item headers from an offset to the end: each value must fit, each undefined length be delimited."""

    def __init__(self, data: memoryview, endian: str) -> None:
        self.data = data
        self.tag_length = struct.Struct(endian + "HHI")  # implicit VR, and items
        self.explicit = struct.Struct(endian + "HH2sH")
        self.long = struct.Struct(endian + "I")

    def elements(self, offset: int, end: int, implicit: bool, in_item: bool = False) -> int:
        """Walk elements to ``end`` (or, ``in_item``, to an item delimitation); the offset after them."""
        while offset < end:
            tag, vr, offset, length = self._header(offset, end, implicit)
            if in_item and tag == _ITEM_END:
                return offset
            if length != _UNDEFINED:
                offset = self._skip(offset, length, end, tag)
            else:  # the items of a UN of undefined length are implicit VR (PS3.5 6.2.2)
                offset = self._items(offset, end, tag, implicit or vr == b"UN")
        if in_item:
            raise Undecodable("a sequence item of undefined length is not delimited: the dataset is cut short")
        return offset

    def _items(self, offset: int, end: int, tag: int, implicit: bool) -> int:
        """Walk the items of an element of undefined length (a sequence, encapsulated pixel data) to its delimiter."""
        while offset + 8 <= end:
            group, element, length = self.tag_length.unpack_from(self.data, offset)
            offset += 8
            item = group << 16 | element
            if item == _SEQUENCE_END:
                return offset
            if item != _ITEM:
                raise Undecodable(f"element {_tag(tag)} of undefined length holds {_tag(item)}, not an item")
            if length == _UNDEFINED:
                offset = self.elements(offset, end, implicit, in_item=True)
            else:
                offset = self._skip(offset, length, end, item)
        raise Undecodable(f"element {_tag(tag)} of undefined length is not delimited: the dataset is cut short")

    def _header(self, offset: int, end: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
        """Tag, VR (None in implicit VR), offset of the value and its length, of the element at ``offset``."""
        if offset + 8 > end:
            raise Undecodable(f"{end - offset} bytes at the end are not an element: the dataset is cut short")
        if implicit:
            group, element, length = self.tag_length.unpack_from(self.data, offset)
            return group << 16 | element, None, offset + 8, length
        group, element, vr, length = self.explicit.unpack_from(self.data, offset)
        tag = group << 16 | element
        if group == 0xFFFE:  # an item delimitation: no VR
            return tag, None, offset + 8, self.long.unpack_from(self.data, offset + 4)[0]
        if vr in _LONG_LENGTH_VRS:
            if offset + 12 > end:
                raise Undecodable(f"element {_tag(tag)} is cut short in its header")
            return tag, vr, offset + 12, self.long.unpack_from(self.data, offset + 8)[0]
        return tag, vr, offset + 8, length

    @staticmethod
    def _skip(offset: int, length: int, end: int, tag: int) -> int:
        if offset + length > end:
            raise Undecodable(f"element {_tag(tag)} is cut short: {length} bytes long, {end - offset} left")
        return offset + length
