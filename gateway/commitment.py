"""Storage Commitment Push Model as SCP (DICOM PS3.4 Annex J): an instance is committed once it is in the bucket.

A modality that deletes its own copies only after the archive commits to them
asks with an N-ACTION (action type 1: a Transaction UID and the SOP instances).
The gateway answers Success at once; later, when every instance it names is in
the inbox bucket or ``commitment.wait_seconds`` have passed, it opens an
association to the modality (``commitment.peers``: where each calling AE title
listens, the gateway in the SCP role) and sends the N-EVENT-REPORT: event type 1
when all are committed, 2 with a Failed SOP Sequence otherwise, whose reasons
(PS3.3 C.14.1.1) are

=======  ======================  ==================================================
0x0112   No such object instance  not received, or received before the newest
                                  ``LEDGER_SIZE`` instances (the modality sends it again)
0x0110   Processing failure       still in the spool after ``wait_seconds`` (Cloud
                                  Storage unreachable): it stays there and is uploaded
=======  ======================  ==================================================

What is in the bucket survives a restart: each upload appends the instance's
UID to a journal in the spool directory (``commitment.journal``, flushed, not
fsynced: a power loss may forget the last few, which are then reported
0x0112 and sent again, never committed unsent), compacted to the newest
``LEDGER_SIZE`` once it holds twice as many lines. A journal that cannot be
written or compacted is a WARNING, never a reason to stop uploading or reporting.

A report the modality does not take is tried again a few times, then given up
with a WARNING: the modality asks again (its own timeout), which is the
standard's recovery.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from handlers import log

from .config import GatewayConfig
from .naming import hide_uids
from .spool import Record, make_directory

# The well-known SOP Instance UID of the Storage Commitment Push Model (PS3.4 J.3.5).
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
# The newest instances the ledger remembers (about 150 bytes each).
LEDGER_SIZE = 200_000
JOURNAL_NAME = "commitment.journal"
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
NO_SUCH_INSTANCE, PROCESSING_FAILURE = 0x0112, 0x0110
REPORT_ATTEMPTS = 4
STATUS = {"success": 0x0000, "processing_failure": PROCESSING_FAILURE, "no_such_action": 0x0123,
          "missing_attribute": 0x0120}


class Ledger:
    """SOP instances received: how many copies wait in the spool, whether one is uploaded.

    With ``journal``, the uploaded ones are remembered across restarts (read back
    at construction); :meth:`close` closes the journal.
    """

    def __init__(self, journal: Path | None = None, size: int = LEDGER_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[str, list[int]] = OrderedDict()  # uid -> [copies spooled, copies uploaded]
        self._changed = threading.Condition()
        self.journal = journal
        self._journal_file: IO[str] | None = None  # opened by the first line appended after a compaction
        self._journal_lines = 0
        self._compact_after = 2 * size  # journal lines past which it is compacted
        self._journal_failing = False  # warned once until a write succeeds again
        self._closed = False
        if journal is not None:
            make_directory(journal.parent)  # the spool directory, usually: created durably
            journaled = _journaled(journal)
            for uid in journaled:
                self._remember(uid)[:] = [1, 1]
            self._journal_lines = len(journaled)
            self._try_compact()

    def spooled(self, record: Record) -> None:
        """A C-STORE of this instance was acknowledged (or recovered from the spool at start)."""
        uid = record.meta.get("sopInstanceUID")
        if not uid:
            return
        with self._changed:
            self._remember(uid)[0] += 1

    def uploaded(self, record: Record) -> None:
        """A spooled copy of this instance is in the bucket: noted in the journal, waiters woken."""
        uid = record.meta.get("sopInstanceUID") or ""
        with self._changed:
            entry = self._entries.get(uid)
            if entry is None:
                return
            entry[1] += 1
            self._changed.notify_all()
            if self.journal is not None and not self._closed:
                self._append(uid)
                if self._journal_lines > self._compact_after:
                    self._try_compact()

    def superseded(self, record: Record) -> None:
        """A spooled copy of this instance was dropped for a newer copy of the same object: it no longer waits.

        The instance is then committed once its newer copy is in the bucket (the object a request for its
        UID is answered by), not before.
        """
        uid = record.meta.get("sopInstanceUID")
        with self._changed:
            entry = self._entries.get(uid or "")
            if entry is None:
                return
            entry[0] -= 1
            self._changed.notify_all()

    def remembered(self) -> int:
        """How many instances the ledger knows (uploaded or waiting)."""
        with self._changed:
            return len(self._entries)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            if self._journal_file is not None:
                try:
                    self._journal_file.close()
                except OSError:
                    pass  # what it could not flush was warned about when written
                self._journal_file = None

    def _remember(self, uid: str) -> list[int]:
        """The entry of ``uid``, now the newest; the oldest forgotten past ``size``."""
        entry = self._entries.setdefault(uid, [0, 0])
        self._entries.move_to_end(uid)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return entry

    def _append(self, uid: str) -> None:
        """One line in the journal (opened first if need be); a failure is warned once until a line is written."""
        assert self.journal is not None
        try:
            if self._journal_file is None:
                self._journal_file = _open_to_append(self.journal)
            self._journal_file.write(f"{uid}\n")
            self._journal_file.flush()
            self._journal_lines += 1
            self._journal_failing = False
        except OSError as exc:  # a full disk: committed now, forgotten by a restart (re-sent then)
            if not self._journal_failing:
                log.warning("storage commitment journal not written: a restart will report the instances "
                            "uploaded meanwhile not received", error=str(exc)[:300], journal=str(self.journal))
            self._journal_failing = True

    def _try_compact(self) -> None:
        """:meth:`_compact`; when it fails, a WARNING, the journal appended to as it is, tried again later."""
        try:
            self._compact()
        except OSError as exc:
            self._compact_after = self._journal_lines + self.size
            log.warning("storage commitment journal not compacted: it grows until a compaction succeeds",
                        error=str(exc)[:300], journal=str(self.journal), retryAfterLines=self.size)

    def _compact(self) -> None:
        """Rewrite the journal as the uploaded instances remembered now, oldest first.

        The journal file is closed first and left to :meth:`_append` to open again: whether this
        succeeds or raises, no closed file stays in place.
        """
        assert self.journal is not None
        journal_file, self._journal_file = self._journal_file, None
        uploaded = [uid for uid, (_, copies) in self._entries.items() if copies]
        partial = self.journal.with_name(self.journal.name + ".tmp")
        try:
            if journal_file is not None:
                journal_file.close()
            with open(partial, "w", encoding="ascii") as out:
                out.write("".join(f"{uid}\n" for uid in uploaded))
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, self.journal)
        except OSError:
            with suppress(OSError):
                partial.unlink(missing_ok=True)  # what it holds would only take space
            raise
        self._journal_lines = len(uploaded)
        self._compact_after = 2 * self.size

    def committed(self, uid: str) -> bool | None:
        """True: every copy received is in the bucket; False: one still waits in the spool; None: never received."""
        with self._changed:
            entry = self._entries.get(uid)
            return None if entry is None else entry[1] >= entry[0]

    def wait(self, uids: list[str], timeout: float, stopping: threading.Event) -> dict[str, bool | None]:
        """:meth:`committed` for each uid, once none is False, or after ``timeout`` (or ``stopping``)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                states = {uid: self.committed(uid) for uid in uids}
                left = deadline - time.monotonic()
                if False not in states.values() or left <= 0 or stopping.is_set():
                    return states
                self._changed.wait(min(left, 1.0))


@dataclass(frozen=True)
class Request:
    """One N-ACTION: who asked, and the instances (SOP Class UID, SOP Instance UID) it names."""

    calling: str
    transaction: str
    references: tuple[tuple[str, str], ...]


class Committer:
    """Takes N-ACTION requests and sends each one's N-EVENT-REPORT once its instances are in the bucket."""

    def __init__(self, config: GatewayConfig, ledger: Ledger) -> None:
        assert config.commitment is not None
        self.config = config
        self.commitment = config.commitment
        self.ledger = ledger
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def on_action(self, event: Any) -> tuple[int, None]:
        """pynetdicom's EVT_N_ACTION handler: the status answered now; the report follows on its own association."""
        calling = event.assoc.requestor.ae_title
        peer_fields = {"callingAETitle": calling, "address": event.assoc.requestor.address}
        if event.request.ActionTypeID != 1:
            log.warning("storage commitment refused", reason=f"action type {event.request.ActionTypeID} is not 1 "
                        "(request storage commitment)", **peer_fields)
            return STATUS["no_such_action"], None
        if calling not in self.commitment.peers:
            log.warning("storage commitment refused", reason="no commitment.peers entry for this AE title: add "
                        "where it listens for reports", **peer_fields)
            return STATUS["processing_failure"], None
        try:
            request = _request(calling, event.action_information)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for undecodable or incomplete data
            error = hide_uids(str(exc)) if self.config.names.hashed else str(exc)
            log.warning("storage commitment refused", reason=f"unreadable request ({type(exc).__name__}: {error}"[:300]
                        + "): it needs a Transaction UID and a Referenced SOP Sequence", **peer_fields)
            return STATUS["missing_attribute"], None
        log.info("storage commitment requested", transactionUID=request.transaction,
                 instances=len(request.references), **peer_fields)
        worker = threading.Thread(target=self._commit, args=(request,), name="commitment", daemon=True)
        self._threads = [thread for thread in self._threads if thread.is_alive()] + [worker]
        worker.start()
        return STATUS["success"], None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop waiting: pending requests are dropped (their modalities ask again)."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _commit(self, request: Request) -> None:
        states = self.ledger.wait([uid for _, uid in request.references], self.commitment.wait_seconds,
                                  self._stopping)
        if self._stopping.is_set():
            return
        committed = [(cls, uid) for cls, uid in request.references if states[uid]]
        failed = [(cls, uid, NO_SUCH_INSTANCE if states[uid] is None else PROCESSING_FAILURE)
                  for cls, uid in request.references if not states[uid]]
        report = _report(request.transaction, committed, failed)
        fields = {"callingAETitle": request.calling, "transactionUID": request.transaction,
                  "committed": len(committed), "failed": len(failed),
                  "notReceived": sum(1 for *_, reason in failed if reason == NO_SUCH_INSTANCE)}
        for attempt in range(1, REPORT_ATTEMPTS + 1):
            error = self._send(request.calling, report, 2 if failed else 1)
            if error is None:
                log.info("storage commitment reported", attempts=attempt, **fields)
                return
            if attempt < REPORT_ATTEMPTS and self._stopping.wait(2.0 ** attempt):
                return
        log.warning("storage commitment report not delivered: the modality will ask again", error=error, **fields)

    def _send(self, calling: str, report: Any, event_type: int) -> str | None:
        """Send one N-EVENT-REPORT on a new association; None on Success, else what went wrong."""
        host, port = self.commitment.peers[calling]
        try:
            return _send_report(self.config.ae_title, calling, host, port, report, event_type)
        except Exception as exc:  # noqa: BLE001 - any failure is tried again, then logged
            return f"{type(exc).__name__}: {exc}"[:300]


def _send_report(ae_title: str, calling: str, host: str, port: int, report: Any, event_type: int) -> str | None:
    """One N-EVENT-REPORT to ``calling`` at host:port, the gateway in the SCP role; None on Success."""
    from pynetdicom import AE, build_role
    from pynetdicom.sop_class import StorageCommitmentPushModel

    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    assoc = ae.associate(host, port, ae_title=calling, ext_neg=[role])
    if not assoc.is_established:
        return f"association to {calling} at {host}:{port} not established (rejected: {assoc.is_rejected})"
    try:
        status, _ = assoc.send_n_event_report(report, event_type, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
    finally:
        assoc.release()
    code = int(status.Status) if status is not None and "Status" in status else None
    return None if code == 0 else f"N-EVENT-REPORT answered {code if code is None else f'0x{code:04X}'}"


def _open_to_append(journal: Path) -> IO[str]:
    """The journal opened for appending; a last line a crash cut short is ended first, so no UID joins it."""
    handle = open(journal, "a", encoding="ascii")  # noqa: SIM115 - closed by Ledger.close or a compaction
    if handle.tell() and not _ends_with_newline(journal):
        handle.write("\n")
    return handle


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _journaled(journal: Path) -> list[str]:
    """The UIDs in a journal, oldest first; a last line a crash cut short (no newline) is skipped."""
    try:
        *lines, _unfinished = journal.read_text(encoding="ascii", errors="replace").split("\n")
    except FileNotFoundError:
        return []
    return [line for line in lines if _UID.fullmatch(line) and len(line) <= 64]


def _request(calling: str, dataset: Any) -> Request:
    references = tuple((str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
                       for item in dataset.ReferencedSOPSequence)
    if not references:
        raise ValueError("instances in its Referenced SOP Sequence")
    return Request(calling, str(dataset.TransactionUID), references)


def _report(transaction: str, committed: list[tuple[str, str]], failed: list[tuple[str, str, int]]) -> Any:
    """The Event Information of the N-EVENT-REPORT (PS3.4 J.3.3)."""
    from pydicom.dataset import Dataset

    report = Dataset()
    report.TransactionUID = transaction
    if committed:
        report.ReferencedSOPSequence = [sop_reference(cls, uid) for cls, uid in committed]
    if failed:
        report.FailedSOPSequence = [sop_reference(cls, uid, reason) for cls, uid, reason in failed]
    return report


def sop_reference(sop_class: str, sop_instance: str, reason: int | None = None) -> Any:
    """An item of a Referenced (or, with ``reason``, Failed) SOP Sequence: request and report alike."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if reason is not None:
        item.FailureReason = reason
    return item
