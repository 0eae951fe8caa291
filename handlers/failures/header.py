"""A DICOM Part 10 file's identity without pydicom: its UIDs, transfer syntax, and whether it is truncated.

The deployed function does not ship pydicom (cold start), and it only needs
three UIDs and one yes/no: this walker reads the preamble, the file meta
group and the data set's element headers, skipping values (and nested
sequences) by their declared lengths. It works on a prefix of the file (a
ranged read) when ``total_size`` says how long the whole object is: a value
that would end past the object's end means the file is truncated; one that
ends past the prefix only stops the walk. The emulator uses the same walker
to refuse truncated files, which pydicom would read without complaint.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

PREAMBLE = 128
MAGIC = b"DICM"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
# Explicit VRs whose length is 4 bytes after 2 reserved ones (PS3.5 7.1.2).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
STUDY, SERIES, SOP = (0x0020, 0x000D), (0x0020, 0x000E), (0x0008, 0x0018)
TRANSFER_SYNTAX = (0x0002, 0x0010)
_WANTED = frozenset({STUDY, SERIES, SOP, TRANSFER_SYNTAX})
MAX_DEPTH = 32


class NotDicom(ValueError):
    """Not a DICOM Part 10 file at all (no preamble and ``DICM``, unreadable file meta); the message says why."""


@dataclass(frozen=True)
class Header:
    """What the walk found. ``truncated`` is empty, or says which element runs past the end of the object."""

    study: str
    series: str
    sop: str
    transfer_syntax: str
    truncated: str
    complete: bool
    """True when the whole file was walked (not stopped at the end of a prefix)."""

    @property
    def uids(self) -> tuple[str, str, str] | None:
        """(study, series, SOP instance) when all three were found."""
        return (self.study, self.series, self.sop) if self.study and self.series and self.sop else None

    @property
    def path(self) -> str:
        """``studies/S/series/SE/instances/I`` (DICOMweb) of the instance the file holds."""
        return f"studies/{self.study}/series/{self.series}/instances/{self.sop}"


class _Truncated(Exception):
    pass


class _Exhausted(Exception):
    """The prefix ended before the object did: nothing more can be said from these bytes."""


class _Cursor:
    def __init__(self, data: bytes, total: int | None, little: bool = True, explicit: bool = True) -> None:
        self.data = data
        self.total = total  # size of the whole stream; None when unknown (a prefix of a deflated stream)
        self.pos = 0
        self.little = little
        self.explicit = explicit
        self.values: dict[tuple[int, int], str] = {}

    def need(self, count: int, what: str) -> None:
        end = self.pos + count
        if end <= len(self.data):
            return
        if self.total is not None and end > self.total:
            raise _Truncated(f"{what} needs {count} bytes at offset {self.pos}, but the object ends at {self.total}")
        raise _Exhausted()

    def take(self, count: int, what: str) -> bytes:
        self.need(count, what)
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def skip(self, count: int, what: str) -> None:
        end = self.pos + count
        if self.total is not None and end > self.total:
            raise _Truncated(f"{what} declares {count} bytes at offset {self.pos}, "
                             f"but only {self.total - self.pos} remain in the object")
        if end > len(self.data):
            raise _Exhausted()
        self.pos = end

    def at_end(self) -> bool:
        if self.pos < len(self.data):
            return False
        if self.total is None or self.pos < self.total:
            raise _Exhausted()
        return True

    def unsigned(self, size: int, what: str, little: bool | None = None) -> int:
        raw = self.take(size, what)
        order = "<" if (self.little if little is None else little) else ">"
        return struct.unpack(order + ("H" if size == 2 else "I"), raw)[0]

    def element(self, explicit: bool | None = None, little: bool | None = None) -> tuple[tuple[int, int], bytes, int]:
        """(tag, VR or b'', value length) of the next element header."""
        little = self.little if little is None else little
        explicit = self.explicit if explicit is None else explicit
        group = self.unsigned(2, "an element tag", little)
        number = self.unsigned(2, "an element tag", little)
        tag = (group, number)
        label = f"element ({group:04X},{number:04X})"
        if group == 0xFFFE or not explicit:
            return tag, b"", self.unsigned(4, label, little)
        vr = self.take(2, label)
        if vr in LONG_VRS:
            self.take(2, label)
            return tag, vr, self.unsigned(4, label, little)
        return tag, vr, self.unsigned(2, label, little)

    def walk(self, top: bool, explicit: bool, depth: int = 0) -> None:
        """Elements until the end (top level) or an item delimiter (an undefined-length item)."""
        if depth > MAX_DEPTH:
            raise NotDicom(f"sequences nested deeper than {MAX_DEPTH} levels")
        while True:
            if top and self.at_end():
                return
            tag, vr, length = self.element(explicit)
            label = f"element ({tag[0]:04X},{tag[1]:04X})"
            if tag in (ITEM_END, SEQUENCE_END):
                if top:
                    raise NotDicom(f"unexpected delimiter {label} at offset {self.pos - 8} of the data set")
                return
            if length == UNDEFINED:
                self.items(depth + 1, explicit and vr != b"UN", label)  # UN sequences are implicit VR inside
            elif top and tag in _WANTED:
                self.values[tag] = self.take(length, label).decode("ascii", "replace").strip("\0 ")
            else:
                self.skip(length, label)

    def items(self, depth: int, explicit: bool, label: str) -> None:
        """The items of an undefined-length value (a sequence, or encapsulated pixel data), up to its delimiter."""
        while True:
            tag, _, length = self.element(explicit=False)
            if tag == SEQUENCE_END:
                return
            if tag != ITEM:
                raise NotDicom(f"{label}: expected an item (FFFE,E000), found ({tag[0]:04X},{tag[1]:04X})")
            if length == UNDEFINED:
                self.walk(top=False, explicit=explicit, depth=depth)
            else:
                self.skip(length, f"an item of {label}")

    def looks_explicit(self) -> bool | None:
        """Whether the next element carries a VR (two upper-case letters after its tag); None if unknown yet.

        Some writers use implicit VR under an explicit transfer syntax (and the
        reverse); pydicom, and the API, read such files, so the walk follows
        what the first element of the data set shows.
        """
        if self.pos + 6 > len(self.data):
            return None
        vr = self.data[self.pos + 4:self.pos + 6]
        return vr.isalpha() and vr.isupper()


def inspect(data: bytes, total_size: int | None = None) -> Header:
    """Walk ``data`` (the whole file, or its first bytes when ``total_size`` gives the object's size).

    Raises :class:`NotDicom` when the bytes are no DICOM Part 10 file.
    """
    total = len(data) if total_size is None else total_size
    if total == 0:
        raise NotDicom("the object is empty")
    if total < PREAMBLE + len(MAGIC):
        raise NotDicom(f"{total} bytes is shorter than the 128-byte preamble and 'DICM' of a DICOM file")
    if data[PREAMBLE:PREAMBLE + len(MAGIC)] != MAGIC:
        raise NotDicom("no 'DICM' marker after the 128-byte preamble: not a DICOM Part 10 file")
    cursor = _Cursor(data, total)
    cursor.pos = PREAMBLE + len(MAGIC)
    truncated, complete = "", False
    try:
        _read_meta(cursor)
        syntax = cursor.values.get(TRANSFER_SYNTAX, "")
        if not syntax:
            raise NotDicom("the file meta has no TransferSyntaxUID (0002,0010)")
        cursor.little = syntax != EXPLICIT_BE
        cursor.explicit = syntax != IMPLICIT_LE
        if syntax == DEFLATED:
            cursor = _inflated(cursor, whole=len(data) >= total)
        shown = cursor.looks_explicit()
        cursor.walk(top=True, explicit=cursor.explicit if shown is None else shown)
        complete = True
    except _Truncated as exc:
        truncated = str(exc)
    except _Exhausted:
        pass
    except struct.error as exc:  # pragma: no cover - _need guards every read
        raise NotDicom(f"unreadable element: {exc}") from None
    values = cursor.values
    return Header(values.get(STUDY, ""), values.get(SERIES, ""), values.get(SOP, ""),
                  values.get(TRANSFER_SYNTAX, ""), truncated, complete)


def _read_meta(cursor: _Cursor) -> None:
    """The file meta group (0002,xxxx): always explicit VR little endian."""
    while True:
        cursor.need(2, "the data set after the file meta information")
        group = struct.unpack("<H", cursor.data[cursor.pos:cursor.pos + 2])[0]
        if group != 0x0002:
            return
        tag, vr, length = cursor.element(explicit=True, little=True)
        if not vr.isalpha():
            raise NotDicom("the file meta information is not explicit VR little endian")
        label = f"element ({tag[0]:04X},{tag[1]:04X})"
        if tag == TRANSFER_SYNTAX:
            cursor.values[tag] = cursor.take(length, label).decode("ascii", "replace").strip("\0 ")
        else:
            cursor.skip(length, label)


def _inflated(cursor: _Cursor, whole: bool) -> _Cursor:
    """A cursor on the inflated data set of a deflated transfer syntax (meta values kept)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(cursor.data[cursor.pos:])
    except zlib.error as exc:
        raise NotDicom(f"the deflated data set cannot be inflated: {exc}") from None
    if whole and not inflater.eof:
        raise _Truncated("the deflated data set ends before its end-of-stream marker")
    inflated = _Cursor(data, len(data) if whole else None, little=True, explicit=True)
    inflated.values.update(cursor.values)
    return inflated
