"""The durable spool: received instances are appended to segment files and fsynced before any acknowledgement.

Layout: ``DIR/NNNNNNNNNNNNNNNNNNNN.seg`` files, each a sequence of records::

    b"DGR1" | header length (u32) | payload length (u64) | CRC-32 of the header (u32) | header (JSON) | payload

The payload is the instance's DICOM Part 10 bytes as received; the header holds
its object name, the payload's CRC-32 and where it came from. (The MD5 that
Cloud Storage compares is computed at upload time, off the acknowledgement path:
it costs about 15 times a CRC-32.)

**Never acknowledge what could be lost.** :meth:`Spool.append` returns only
once the record's bytes are on disk: ``fdatasync`` of the segment, an
``fsync`` of the directory when a segment is created, and of the parent of
each directory the spool creates. Appends from all
associations go to one current segment, and one ``fdatasync`` covers every
record written before it started (group commit): concurrent associations
share flushes, a lone association pays one flush per instance, not the
create + fsync + rename + directory fsync of a file per instance.

**Restart resumes.** :meth:`Spool.recover` reads every segment left on disk
(all sealed: new records go to a new segment) and returns their records for
upload, in the order they were received: a segment's name ``N`` is one more
than the highest found on disk or made since, never the wall clock, which NTP
may step back between two segments (the older version of an instance would be
recovered last, and supersede the newer one). Reception times do not go back
either (:mod:`gateway.stamps`): new records are stamped after the newest on
disk. A record cut short by a crash fails its length or a CRC check (a whole
one fails its payload CRC only if it ends in zeros, as lost pages read); it was
never acknowledged, and it and anything after it in that segment are dropped
with a warning and cut off the file. Unreadable bytes anywhere else (a damaged record followed by
readable ones, or a ``.seg`` file that does not start with a record) are not a
crash's: recovery skips them to the next record that checks out, keeps every
record found, and sets the file aside as ``NAME.seg.corrupt`` (never deleted,
out of the spool) with an ERROR, after copying the records not yet uploaded,
byte for byte, to a new ``NAME.seg``. Each record
done with (:meth:`Spool.done`: uploaded,
or superseded) is noted in the segment's ``.ack`` file (its payload offset, a
u64, written but not fsynced: it survives the process, killed or stopped, not
always a power loss); recovery skips those, so a restart does not upload again
what was uploaded. One the ``.ack`` file lost is uploaded again, and the
uploader recognises the identical object.

**Bounded.** Past ``max_bytes`` of segments on disk, :meth:`append` raises
:class:`SpoolFull` (the receiver answers Out of Resources). A segment is
deleted once it is sealed and each of its records is uploaded.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import stat
import struct
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from handlers import log

from .stamps import Stamps

__all__ = ["Record", "Spool", "SpoolError", "SpoolFull", "SpoolStats", "make_directory"]

MAGIC = b"DGR1"
_PREFIX = struct.Struct("<4sIQI")  # magic, header length, payload length, header CRC-32
_MAX_HEADER = 64 * 1024
SUFFIX = ".seg"
ACK_SUFFIX = ".ack"  # beside each segment: the payload offsets of its records done with
CORRUPT_SUFFIX = ".corrupt"  # NAME.seg.corrupt: a segment with unreadable bytes, set aside for an operator
_CHUNK = 1 << 20  # bytes checksummed or copied at a time
_OFFSET = struct.Struct("<Q")
_NUMBER = re.compile(r"\d+")


class SpoolError(OSError):
    """The spool could not make a record durable (disk error): nothing was acknowledged."""


class SpoolFull(SpoolError):
    """Appending would take the spool past its size limit."""


@dataclass(frozen=True)
class Record:
    """One spooled instance: where its payload is, and its header."""

    segment: Path
    offset: int  # of the payload in the segment
    length: int  # of the payload
    name: str  # object name, without gs://bucket/
    crc32: int  # of the payload
    received: float  # epoch seconds: the reception stamp, which orders versions (it may run ahead of the clock)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    arrived: float | None = field(default=None, compare=False)  # the clock when the spool got it: for ages

    def __post_init__(self) -> None:
        if self.arrived is None:
            object.__setattr__(self, "arrived", self.received)

    def read(self) -> bytes:
        """The payload (the instance's Part 10 bytes)."""
        with open(self.segment, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(self.length)
        if len(data) != self.length:
            raise SpoolError(f"{self.segment}: record at {self.offset} is cut short ({len(data)} of {self.length} bytes)")
        if zlib.crc32(data) != self.crc32:
            raise SpoolError(f"{self.segment}: record at {self.offset} does not match its CRC-32 (disk corruption)")
        return data


@dataclass(frozen=True)
class SpoolStats:
    pending: int  # records acknowledged but not yet uploaded
    pending_bytes: int
    oldest_age: float  # seconds the oldest pending record has waited by the clock (0 if none)
    disk_bytes: int  # bytes of segment files on disk
    segments: int
    appended: int  # records made durable since start
    flushes: int  # fdatasync calls since start: appended / flushes is the group commit's sharing


class _Segment:
    """A segment file: size written, size made durable, records and how many are uploaded."""

    def __init__(self, path: Path, fd: int | None, size: int = 0) -> None:
        self.path = path
        self.fd = fd  # open for appending while current or not yet fully synced; None once closed
        self.size = size  # bytes written
        self.synced = size  # bytes known durable
        self.syncing = False
        self.failed: OSError | None = None
        self.sealed = fd is None
        self.records = 0
        self.uploaded = 0
        self.ack_fd: int | None = None  # the .ack file, opened by the first record done with
        self.ack_failing = False  # warned once
        self.cond = threading.Condition()

    @property
    def ack_path(self) -> Path:
        return self.path.with_suffix(ACK_SUFFIX)


def _crc32(*parts: bytes | memoryview) -> int:
    value = 0
    for part in parts:
        value = zlib.crc32(part, value)
    return value


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directory(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each fsynced into its parent: a power loss cannot undo them."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        _fsync_directory(path.parent)


class Spool:
    """Append-only, fsynced, size-bounded segments of received instances (see the module docstring)."""

    def __init__(self, directory: str | Path, *, max_bytes: int, segment_bytes: int = 64 * 1024 * 1024,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._segments: dict[Path, _Segment] = {}
        self._current: _Segment | None = None
        self._pending: OrderedDict[tuple[Path, int], tuple[float, int]] = OrderedDict()
        self._sequence = 0
        self._closed = False
        self._appended = 0
        self._flushes = 0
        self.clock = clock  # the wall clock: when records arrive, how long they wait
        self._stamps = Stamps(clock)  # each record's reception time
        self._keep: set[Path] = set()  # segments with unreadable bytes that could not be set aside: never deleted

    # -- restart ---------------------------------------------------------------
    def recover(self) -> list[Record]:
        """Create the directory if needed; read every segment on disk; return the records not yet done with
        (not noted in the segment's ``.ack`` file), oldest first."""
        make_directory(self.directory)
        for leftover in self.directory.glob("*.tmp"):
            if _regular(leftover):
                leftover.unlink()
        for ack in self.directory.glob(f"*{ACK_SUFFIX}"):
            if _regular(ack) and not os.path.lexists(ack.with_suffix(SUFFIX)):  # its segment deleted before a crash
                ack.unlink()
        records: list[Record] = []
        names = sorted(self.directory.glob(f"*{SUFFIX}"), key=lambda path: (_number(path), path.name))
        set_aside = self.directory.glob(f"*{SUFFIX}{CORRUPT_SUFFIX}*")  # their numbers are not given again
        with self._lock:
            self._sequence = max([self._sequence, *map(_number, names), *map(_number, set_aside)])
        paths = []
        for path in names:
            if _regular(path):
                paths.append(path)
            else:  # a directory, a symlink, a FIFO...: not the spool's, never opened, never deleted
                log.error("spool: not a regular file, left where it is", segment=str(path))
        newest = next((path for path in reversed(paths) if _size(path)), None)  # the one written last
        now = self.clock()
        for path in paths:
            try:
                found, starts, gaps = self._scan(path, newest=path == newest)
                acked = _read_acks(path.with_suffix(ACK_SUFFIX))
            except OSError as exc:
                log.error("spool: cannot read a segment, left where it is", segment=str(path), error=str(exc))
                continue
            for record in found:  # a clock stepped back since cannot stamp a newer version earlier than these
                self._stamps.after(record.received)
            # waiting since they were received, or since now if stamped ahead of the clock (one since stepped back)
            waiting = [replace(record, arrived=min(record.received, now)) for record in found
                       if record.offset not in acked]
            size, total = _end(found), len(found)
            if gaps:
                copied = self._set_aside(path, found, starts, waiting, gaps)
                if copied is not None:
                    waiting, size, total = copied, _end(copied), len(copied)
                else:
                    size = path.stat().st_size
            segment = _Segment(path, None, size)
            segment.records, segment.uploaded = total, total - len(waiting)
            with self._lock:
                self._segments[path] = segment
                for record in waiting:
                    self._pending[(path, record.offset)] = (record.arrived, record.length)
                if segment.uploaded >= segment.records:
                    self._delete(segment)
            records.extend(waiting)
        return records

    def _scan(self, path: Path, newest: bool) -> tuple[list[Record], list[int], list[tuple[int, int]]]:
        """A segment file's records, where each starts, and its unreadable stretches (offset, bytes).

        Unreadable bytes with no record after them are a torn tail, dropped with a WARNING (not a stretch),
        when they look like a crash's: a record cut short, or anything after a whole record in the segment
        written last (``newest``), whose last pages a crash may have lost. Anything else is damage. A torn
        tail is cut off the file (fsynced): once newer segments exist, the same bytes would look like damage.
        """
        size = path.stat().st_size
        records: list[Record] = []
        starts: list[int] = []
        gaps: list[tuple[int, int]] = []
        if size == 0:
            return records, starts, gaps
        offset = 0
        torn: int | None = None
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            # Linked as NAME.seg.corrupt: an earlier start set it aside as damaged and could not finish (disk full,
            # say). Its bytes stay damage: cutting a "torn" tail now would cut the kept copy too (the same file).
            set_aside = os.fstat(handle.fileno()).st_nlink > 1
            while offset < size:
                record = _parse(data, path, offset)
                if record is not None:
                    records.append(record)
                    starts.append(offset)
                    offset = record.offset + record.length
                    continue
                following = _next_record(data, path, offset + 1)
                if following is None and not set_aside and _torn(data, offset, newest):
                    log.warning("spool: dropping an incomplete record (never acknowledged)", segment=str(path),
                                offset=offset, bytes=size - offset)
                    torn = offset
                    break
                end = size if following is None else following
                gaps.append((offset, end - offset))
                offset = end
        if torn is not None:
            _cut(path, torn)
        return records, starts, gaps

    def _set_aside(self, path: Path, found: list[Record], starts: list[int], waiting: list[Record],
                   gaps: list[tuple[int, int]]) -> list[Record] | None:
        """A segment with unreadable stretches: keep it as ``NAME.seg.corrupt`` for an operator, after copying
        its records not yet uploaded to a new ``NAME.seg``; return those copies (None: left where it was).

        In this order a crash at any point leaves every record in a ``NAME.seg`` (the next recovery does it
        again), at worst without its ``.ack`` notes (those records are uploaded again, and found identical).
        Without hard links the ``.corrupt`` copy is made as ``*.tmp`` (removed at recovery), fsynced, renamed:
        whole or not at all; one of the same bytes already there (a recovery cut short) is not made again.
        A file that cannot be set aside stays in the spool and is never deleted (the next start tries again).
        """
        corrupt = path.with_name(path.name + CORRUPT_SUFFIX)
        fields: dict[str, Any] = dict(segment=str(path), keptAs=str(corrupt), offset=gaps[0][0],
                                      bytes=sum(length for _, length in gaps), stretches=len(gaps),
                                      recordsFound=len(found))
        try:
            number = 0
            while os.path.lexists(corrupt) and not _same(corrupt, path):  # the same: a recovery cut short made it
                number += 1
                corrupt = path.with_name(f"{path.name}{CORRUPT_SUFFIX}.{number}")
            fields["keptAs"] = str(corrupt)
            if not os.path.lexists(corrupt):
                try:
                    os.link(path, corrupt)
                except OSError:  # no hard links on this file system: a copy, whole or none (*.tmp: removed)
                    temporary = corrupt.with_name(corrupt.name + ".tmp")
                    shutil.copyfile(path, temporary)
                    _fsync_file(temporary)
                    os.replace(temporary, corrupt)
                _fsync_directory(self.directory)
            path.with_suffix(ACK_SUFFIX).unlink(missing_ok=True)  # its offsets are not the copy's
            start_of = {record.offset: start for record, start in zip(found, starts)}
            copied = _copy_records(path, [start_of[record.offset] for record in waiting], waiting)
        except OSError as exc:
            log.error("spool: unreadable bytes skipped in a segment that cannot be set aside: it stays in the "
                      "spool, never deleted", error=str(exc), **fields)
            self._keep.add(path)
            return None
        try:
            _fsync_directory(self.directory)
        except OSError:
            pass  # the copy is in place: its records are read from it whatever a power loss may undo
        log.error("spool: unreadable bytes skipped in a segment (not a crash's): the records that check out "
                  "recovered, the file kept for inspection", **fields)
        return copied

    # -- the hot path ----------------------------------------------------------
    def append(self, name: str, payload: bytes | tuple[bytes | memoryview, ...],
               meta: dict[str, Any] | None = None) -> Record:
        """Write one instance (``payload``, or the concatenation of its parts) and return once it is durable.

        Raises :class:`SpoolFull` past the size limit, :class:`SpoolError` when the
        disk fails; in both cases the instance must not be acknowledged.
        """
        parts = (payload,) if isinstance(payload, bytes) else payload
        payload_length = sum(len(part) for part in parts)
        crc32 = _crc32(*parts)
        with self._lock:
            if self._closed:
                raise SpoolError("the spool is closed (the gateway is stopping)")
            # Stamped under the lock that gives the record its place in the spool: the order of the stamps (the
            # bucket's "newest wins") is the order of the records (recovery's and the uploader's).
            received = self._stamps.next()
            arrived = self.clock()  # not the stamp, which a clock stepped back leaves ahead of it
            header = json.dumps({"name": name, "crc32": crc32, "received": received, "meta": meta or {}},
                                separators=(",", ":")).encode()
            prefix = _PREFIX.pack(MAGIC, len(header), payload_length, zlib.crc32(header))
            length = len(prefix) + len(header) + payload_length
            if self.disk_bytes() + length > self.max_bytes:
                raise SpoolFull(f"spool holds {self.disk_bytes()} bytes; this instance would pass the limit of {self.max_bytes}")
            segment = self._current if self._current is not None else self._open_segment()
            start = segment.size
            try:
                _write_all(segment.fd, (prefix, header, *parts))  # type: ignore[arg-type]
            except OSError as exc:
                self._seal_after_failure(segment, start, exc)
                failure: OSError | None = exc
            else:
                failure = None
                segment.size = start + length
                segment.records += 1
                payload_offset = start + len(prefix) + len(header)
                self._pending[(segment.path, payload_offset)] = (arrived, payload_length)
                if segment.size >= self.segment_bytes:
                    segment.sealed = True
                    self._current = None
        if failure is not None:
            self._close_if_done_writing(segment)  # sealed: closed (and deleted if uploaded) once its flushes end
            raise SpoolError(f"cannot write to {segment.path}: {failure.strerror or failure}") from failure
        try:
            self._make_durable(segment, start + length)
        except SpoolError:
            with self._lock:  # not acknowledged, so never uploaded by this run (a restart would find it)
                self._pending.pop((segment.path, payload_offset), None)
                segment.records -= 1
            self._close_if_done_writing(segment)
            raise
        with self._lock:
            self._appended += 1
        return Record(segment.path, payload_offset, payload_length, name, crc32, received, meta or {}, arrived)

    def _open_segment(self) -> _Segment:
        self._sequence += 1
        path = self.directory / f"{self._sequence:020d}{SUFFIX}"
        try:
            make_directory(self.directory)  # deleted while running: the segment's name must survive a crash too
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            _fsync_directory(self.directory)  # the new name survives a crash before its first record is acked
        except OSError as exc:
            raise SpoolError(f"cannot create a spool segment in {self.directory}: {exc.strerror or exc}") from exc
        segment = _Segment(path, fd)
        self._segments[path] = segment
        self._current = segment
        return segment

    def _seal_after_failure(self, segment: _Segment, good_size: int, exc: OSError) -> None:
        """A write failed part way: cut the segment back to its last whole record and stop appending to it."""
        log.error("spool: write failed, segment sealed", segment=str(segment.path), error=str(exc))
        try:
            os.ftruncate(segment.fd, good_size)  # type: ignore[arg-type]
        except OSError:
            pass  # recovery drops a torn tail anyway (length and CRC checks)
        segment.sealed = True
        if self._current is segment:
            self._current = None

    def _make_durable(self, segment: _Segment, end: int) -> None:
        """Wait until ``segment`` is synced up to ``end``; lead one ``fdatasync`` for everyone if none is running."""
        with segment.cond:
            while segment.synced < end:
                if segment.failed is not None:
                    raise SpoolError(f"cannot sync {segment.path}: {segment.failed}") from segment.failed
                if segment.syncing:
                    segment.cond.wait()
                    continue
                segment.syncing = True
                with self._lock:
                    self._flushes += 1
                target = segment.size  # everything written so far: one flush for every waiting writer
                segment.cond.release()
                try:
                    os.fdatasync(segment.fd)  # type: ignore[arg-type]
                    error = None
                except OSError as exc:
                    error = exc
                finally:
                    segment.cond.acquire()
                segment.syncing = False
                if error is not None:
                    # After a failed fsync the page cache cannot be trusted: never append here again.
                    segment.failed = error
                    with self._lock:
                        segment.sealed = True
                        if self._current is segment:
                            self._current = None
                else:
                    segment.synced = max(segment.synced, target)
                segment.cond.notify_all()
        self._close_if_done_writing(segment)

    def _close_if_done_writing(self, segment: _Segment) -> None:
        """Close a sealed segment once nothing more will be synced; delete it if every record is uploaded."""
        with segment.cond:
            finished = segment.failed is not None or segment.synced >= segment.size
            if not (segment.sealed and finished and not segment.syncing and segment.fd is not None):
                return
            os.close(segment.fd)
            segment.fd = None
        with self._lock:
            if segment.uploaded >= segment.records and segment.path in self._segments:
                self._delete(segment)

    # -- after upload ----------------------------------------------------------
    def done(self, record: Record) -> None:
        """``record`` is in Cloud Storage: forget it; delete its segment once sealed and entirely uploaded."""
        with self._lock:
            self._pending.pop((record.segment, record.offset), None)
            segment = self._segments.get(record.segment)
            if segment is None:
                return
            segment.uploaded += 1
            if segment.sealed and segment.uploaded >= segment.records and segment.fd is None:
                self._delete(segment)
            else:
                self._ack(segment, record.offset)

    def _ack(self, segment: _Segment, offset: int) -> None:
        """(Holding the lock) note in the segment's ``.ack`` file that the record at ``offset`` is done with.

        A failure (disk full) is one WARNING per segment: a restart uploads those records again, nothing worse.
        """
        try:
            if segment.ack_fd is None:
                segment.ack_fd = os.open(segment.ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(segment.ack_fd, _OFFSET.pack(offset))
        except OSError as exc:
            if not segment.ack_failing:
                log.warning("spool: cannot note an upload; a restart uploads again the records not noted",
                            segment=str(segment.path), error=str(exc))
            segment.ack_failing = True

    def _delete(self, segment: _Segment) -> None:
        """(Holding the lock) the segment file, then its ``.ack`` file, off the disk (unless it must be kept)."""
        if segment.path in self._keep:
            self._close_ack(segment)
            self._segments.pop(segment.path, None)
            return
        segment.path.unlink(missing_ok=True)
        self._close_ack(segment)
        segment.ack_path.unlink(missing_ok=True)
        self._segments.pop(segment.path, None)

    @staticmethod
    def _close_ack(segment: _Segment) -> None:
        if segment.ack_fd is not None:
            os.close(segment.ack_fd)
            segment.ack_fd = None

    def close(self) -> None:
        """Refuse further appends, close segment files once their flushes end (a later :meth:`recover` resumes)."""
        with self._lock:
            self._closed = True
            self._current = None
            segments = list(self._segments.values())
            for segment in segments:
                self._close_ack(segment)
        for segment in segments:
            with segment.cond:
                while segment.syncing:
                    segment.cond.wait()
                if segment.fd is not None:
                    os.close(segment.fd)
                    segment.fd = None

    # -- observability -----------------------------------------------------------
    def disk_bytes(self) -> int:
        """Bytes of segment files on disk (what counts against the limit)."""
        return sum(segment.size for segment in self._segments.values())

    def stats(self) -> SpoolStats:
        """Pending records, their bytes and the age of the oldest; bytes and count of segments on disk.

        Ages are by the clock since each record arrived (at a restart: since then, or since it was stamped if
        earlier), not since its stamp, which may be ahead of the clock: a stuck upload still ages.
        """
        now = self.clock()
        with self._lock:
            oldest = min((arrived for arrived, _ in self._pending.values()), default=None)
            pending_bytes = sum(length for _, length in self._pending.values())
            return SpoolStats(
                pending=len(self._pending),
                pending_bytes=pending_bytes,
                oldest_age=max(0.0, now - oldest) if oldest is not None else 0.0,
                disk_bytes=self.disk_bytes(),
                segments=len(self._segments),
                appended=self._appended,
                flushes=self._flushes,
            )


def _number(segment: Path) -> int:
    """The number a segment's name starts with: its place in the order of reception (0 if none).

    Segments named ``TIME_NS-PID-N.seg`` by earlier versions start with their creation time in
    nanoseconds, so a spool left by one is recovered first and new segments continue after it.
    """
    found = _NUMBER.match(segment.name)
    return int(found.group()) if found else 0


def _parse(data: mmap.mmap, path: Path, offset: int) -> Record | None:
    """The record starting at ``offset`` if its lengths fit the file and its header and payload CRCs check out."""
    size = len(data)
    if offset + _PREFIX.size > size:
        return None
    magic, header_length, payload_length, crc = _PREFIX.unpack_from(data, offset)
    payload_offset = offset + _PREFIX.size + header_length
    if magic != MAGIC or header_length > _MAX_HEADER or payload_offset + payload_length > size:
        return None
    header_bytes = data[offset + _PREFIX.size:payload_offset]
    if zlib.crc32(header_bytes) != crc:
        return None
    try:
        header = json.loads(header_bytes)
        name, crc32, received = str(header["name"]), int(header["crc32"]), float(header["received"])
        meta = dict(header.get("meta") or {})
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if _crc32_of(data, payload_offset, payload_offset + payload_length) != crc32:
        return None
    return Record(path, payload_offset, payload_length, name, crc32, received, meta)


def _next_record(data: mmap.mmap, path: Path, offset: int) -> int | None:
    """Where the first record that checks out after ``offset`` starts (None: none does)."""
    while (offset := data.find(MAGIC, offset)) != -1:
        if _parse(data, path, offset) is not None:
            return offset
        offset += 1
    return None


def _torn(data: mmap.mmap, offset: int, newest: bool) -> bool:
    """Whether unreadable bytes from ``offset`` to the end of a segment look like a write a crash cut short.

    A crash leaves the bytes written, or zeros where pages were lost: never a header length past the limit,
    nor a record whose header checks out and whose payload is all there but fails its CRC-32 (unless its
    bytes from a page boundary, or from inside its first page, to the end of the file are zeros), nor one
    whose lengths pass the end of the file but whose bytes to that end match its payload's CRC-32 (a length
    field damaged: the prefix's lengths are not covered by the header's CRC).
    """
    size = len(data)
    head = data[offset:offset + _PREFIX.size]
    if len(head) == _PREFIX.size:
        magic, header_length, payload_length, crc = _PREFIX.unpack(head)
        if magic == MAGIC and header_length > _MAX_HEADER:
            return False
        payload_crc = _header_crc32(data, offset, header_length, crc) if magic == MAGIC else None
        if payload_crc is not None:
            payload_offset = offset + _PREFIX.size + header_length
            if payload_offset + payload_length > size:
                return _crc32_of(data, payload_offset, size) != payload_crc
            return _lost_pages(data, offset, payload_offset + payload_length)
    if newest and offset > 0:
        return True  # after a whole record of the segment written last: its last pages lost
    head = data[offset:offset + _PREFIX.size]
    if head[:len(MAGIC)] != MAGIC[:len(head)]:
        return False  # not the start of a record
    if newest or len(head) < _PREFIX.size:
        return True
    _, header_length, payload_length, _ = _PREFIX.unpack(head)
    return header_length <= _MAX_HEADER and offset + _PREFIX.size + header_length + payload_length > len(data)


def _cut(path: Path, size: int) -> None:
    """Truncate ``path`` to ``size`` bytes, fsynced (a failure is logged: the tail stays, and is dropped again)."""
    try:
        with open(path, "r+b") as handle:
            handle.truncate(size)
            os.fsync(handle.fileno())
    except OSError as exc:
        log.warning("spool: cannot cut an incomplete record off its segment", segment=str(path), offset=size,
                    error=str(exc))


def _regular(path: Path) -> bool:
    """Whether ``path`` is a regular file (a symlink is not followed)."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _header_crc32(data: mmap.mmap, offset: int, header_length: int, crc: int) -> int | None:
    """The payload CRC-32 in the header of the record at ``offset``, if that header is all there and checks out."""
    start = offset + _PREFIX.size
    if start + header_length > len(data) or zlib.crc32(data[start:start + header_length]) != crc:
        return None
    try:
        return int(json.loads(data[start:start + header_length])["crc32"])
    except (ValueError, KeyError, TypeError):
        return None


def _crc32_of(data: mmap.mmap, start: int, end: int) -> int:
    value = 0
    for chunk in range(start, end, _CHUNK):
        value = zlib.crc32(data[chunk:min(chunk + _CHUNK, end)], value)
    return value


def _lost_pages(data: mmap.mmap, start: int, end: int) -> bool:
    """Whether the record from ``start`` to ``end`` ends in pages a crash lost: zeros from a page boundary (or
    from inside the record's first page, an earlier flush may have written in part) to the end of the file."""
    zeros_from = len(data)
    while zeros_from > start:
        low = max(start, zeros_from - _CHUNK)
        kept = len(data[low:zeros_from].rstrip(b"\0"))
        zeros_from = low + kept
        if kept:
            break
    first_page_end = start - start % mmap.PAGESIZE + mmap.PAGESIZE
    return zeros_from < end and (zeros_from % mmap.PAGESIZE == 0 or zeros_from < first_page_end)


def _end(records: list[Record]) -> int:
    """The end of the last of ``records`` in its segment (0: none)."""
    return records[-1].offset + records[-1].length if records else 0


def _copy_records(path: Path, starts: list[int], records: list[Record]) -> list[Record]:
    """Replace ``path`` by a file of ``records`` (each starting at its ``starts``) byte for byte, fsynced, and
    return them as they are there; with no records, ``path`` is removed."""
    if not records:
        path.unlink()
        return []
    temporary = path.with_suffix(".tmp")
    copied = []
    with open(path, "rb") as source, open(temporary, "wb") as target:
        for start, record in zip(starts, records):
            copied.append(replace(record, offset=target.tell() + record.offset - start))
            source.seek(start)
            remaining = record.offset + record.length - start
            while remaining:
                chunk = source.read(min(remaining, _CHUNK))
                if not chunk:
                    raise OSError(f"{path} shrank while its records were copied")
                target.write(chunk)
                remaining -= len(chunk)
        target.flush()
        os.fsync(target.fileno())
    os.replace(temporary, path)
    return copied


def _same(kept: Path, path: Path) -> bool:
    """Whether ``kept`` is ``path`` set aside already: the same file (a hard link), or a regular file of its bytes."""
    if not _regular(kept):
        return False
    if kept.samefile(path):
        return True
    if kept.stat().st_size != path.stat().st_size:
        return False
    with open(kept, "rb") as one, open(path, "rb") as other:
        while chunk := one.read(_CHUNK):
            if chunk != other.read(_CHUNK):
                return False
    return True


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _read_acks(path: Path) -> set[int]:
    """The payload offsets noted in an ``.ack`` file (none if it is missing; a torn last entry ignored)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return set()
    whole = len(data) - len(data) % _OFFSET.size
    return {offset for (offset,) in _OFFSET.iter_unpack(data[:whole])}


def _write_all(fd: int, parts: tuple[bytes | memoryview, ...]) -> None:
    """``os.writev`` until every byte of ``parts`` is written (short writes continue)."""
    buffers = [memoryview(part) for part in parts if part]
    while buffers:
        written = os.writev(fd, buffers)
        while written and buffers:
            if written >= len(buffers[0]):
                written -= len(buffers[0])
                buffers.pop(0)
            else:
                buffers[0] = buffers[0][written:]
                written = 0
