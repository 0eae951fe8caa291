"""The DICOM side: a pynetdicom Storage SCP (every storage SOP class) and Verification SCP.

Each C-STORE is answered only after its Part 10 bytes (the dataset exactly as
received, any transfer syntax, never transcoded, behind file meta information
naming the calling AE: :mod:`gateway.part10`) are durable in the spool. Statuses (DICOM PS3.4 Annex B, PS3.7 C):

=======  ==============================================  =========================================
status   meaning                                         when
=======  ==============================================  =========================================
0x0000   Success                                         spooled and fsynced
0x0122   Refused: SOP Class not supported                the request's SOP class is not a storage
                                                         class or not the presentation context's
0xA700   Refused: Out of resources                       the spool is full, or the disk failed
0xA900   Error: Data Set does not match SOP Class        SOP Class, Study, Series or SOP Instance
                                                         UID missing, or the SOP Class or Instance
                                                         UID differs from the request's, or a
                                                         Study, Series or SOP Instance UID is not
                                                         a valid UID
0xC210   Error: Cannot understand                        the dataset does not decode: pydicom cannot
                                                         parse its elements before the pixel data,
                                                         its bytes are not in the transfer syntax's
                                                         VR encoding, or it is cut short (an element
                                                         longer than what is left, pixel data or a
                                                         sequence never delimited)
=======  ==============================================  =========================================

Associations are refused (A-ASSOCIATE-RJ, rejected permanent, by the service
user) with reason 3 "calling AE title not recognised" for an AE title not in
the allow-list, 7 "called AE title not recognised" for a wrong called AE
title, and 1 "no reason given" for a client address outside ``dicom.clients``.
Every outcome is one JSON log line.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from handlers import log

from . import wakeups
from .config import GatewayConfig, load_key_pair
from .contexts import SharedUidContexts
from .naming import MissingUid, ObjectNamer, hide_uids
from .part10 import file_meta, header_values
from .spool import Record, Spool, SpoolError, SpoolFull
from .tlsserver import HandshakeInThreadServer, cut

__all__ = ["Receiver", "STATUS"]

STATUS = {
    "success": 0x0000,
    "sop_class_not_supported": 0x0122,
    "out_of_resources": 0xA700,
    "does_not_match_sop_class": 0xA900,
    "cannot_understand": 0xC210,
}
_REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded (too many associations)",
}


@dataclass
class _AssociationCount:
    stored: int = 0
    refused: int = 0
    logged_end: bool = False


class _JsonLogBridge(logging.Handler):
    """pynetdicom's and pydicom's warnings and errors, and Python warnings, as JSON lines, one per event
    (pynetdicom's routine INFO chatter is off).

    pydicom logs each of its warnings and issues it as a Python warning too (``warn_and_log``): a warning
    that repeats the line its thread just logged is dropped. With ``hide_uids`` (``logs.object_names:
    hashed``) UIDs in them become ``<UID>``: pydicom quotes the values it finds invalid, a study's UIDs among them.
    """

    hide_uids = False

    def __init__(self) -> None:
        super().__init__()
        self._last = threading.local()  # .message: the last line logged by this thread

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self._last.message = message
        self._write(record.levelno, f"{record.name.split('.')[0]}: {message}", logger=record.name)

    def show_warning(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: Any = None, line: str | None = None) -> None:
        """``warnings.showwarning``: one JSON line, unless the warning repeats the line its thread just logged."""
        text = str(message)
        if getattr(self._last, "message", None) == text:
            self._last.message = None
            return
        self._write(logging.WARNING, f"{category.__name__}: {text}", logger="py.warnings",
                    source=f"{Path(filename).name}:{lineno}")

    def _write(self, level: int, message: str, **fields: Any) -> None:
        writer = log.error if level >= logging.ERROR else log.warning
        writer((hide_uids(message) if self.hide_uids else message)[:1000], **fields)


_BRIDGE = _JsonLogBridge()


def _register_storage_classes(uids: tuple[str, ...]) -> None:
    """Make pynetdicom serve C-STOREs of ``uids`` (private SOP classes it does not know) as storage."""
    from pynetdicom import register_uid
    from pynetdicom.service_class import StorageServiceClass
    from pynetdicom.sop_class import uid_to_service_class

    for uid in uids:
        if uid_to_service_class(uid) is not StorageServiceClass:
            register_uid(uid, "AdditionalStorage_" + uid.replace(".", "_"), StorageServiceClass)


def _bridge_library_logs(uids_hidden: bool) -> None:
    """Every line the process writes stays JSON: the libraries' logs and Python warnings go through ``log``."""
    _BRIDGE.hide_uids = uids_hidden
    warnings.showwarning = _BRIDGE.show_warning
    for name in ("pynetdicom", "pydicom"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        if _BRIDGE not in logger.handlers:
            logger.addHandler(_BRIDGE)


class Receiver:
    """Binds pynetdicom's events to the spool; ``start`` listens, ``stop`` closes the port."""

    def __init__(self, config: GatewayConfig, spool: Spool, on_spooled: Callable[[Record], None],
                 on_commitment: Callable[[Any], tuple[int, None]] | None = None) -> None:
        self.config = config
        self.spool = spool
        self.on_spooled = on_spooled
        self.on_commitment = on_commitment  # the Storage Commitment SCP's N-ACTION handler, when configured
        self.namer = ObjectNamer(config.object_name, config.prefix)
        self._server: Any = None
        self._associations: dict[int, _AssociationCount] = {}
        self._lock = threading.Lock()
        # every storage SOP class pynetdicom knows and dicom.additional_sop_classes, at start
        self._storage_classes: frozenset[str] = frozenset()

    @property
    def listening(self) -> bool:
        """True while the DICOM port is open."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The port listened on (useful when configured as 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, _config, evt
        from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

        _config.LOG_HANDLER_LEVEL = "none"
        _bridge_library_logs(self.config.names.hashed)
        if self.config.reactor_wakeups:
            wakeups.install()  # refused (one WARNING line) on another pynetdicom: its own polling stays
        else:
            wakeups.uninstall()

        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = self.config.max_pdu_bytes
        ae.require_calling_aet = list(self.config.calling_ae_titles)
        ae.require_called_aet = True
        ae.network_timeout = 60
        ae.acse_timeout = 30
        _register_storage_classes(self.config.additional_sop_classes)
        standard = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
        self._storage_classes = frozenset([*standard, *self.config.additional_sop_classes])
        for sop_class in sorted(self._storage_classes):
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if self.on_commitment is not None:
            ae.add_supported_context(StorageCommitmentPushModel)
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        if self.on_commitment is not None:
            handlers.append((evt.EVT_N_ACTION, self.on_commitment))
        self._server = ae.make_server((self.config.address, self.config.port), ssl_context=self._ssl_context(),
                                      evt_handlers=handlers, server_class=HandshakeInThreadServer)
        self._server.contexts = SharedUidContexts(self._server.contexts)  # copied per association: see .contexts
        ae._servers.append(self._server)  # as start_server does: the server's shutdown() removes itself there
        threading.Thread(target=self._server.serve_forever, name="dicom-acceptor", daemon=True).start()
        log.info("DICOM receiver listening", aeTitle=self.config.ae_title, address=self.config.address,
                 port=self.port, tls=self.config.tls is not None, callingAETitles=list(self.config.calling_ae_titles),
                 storageCommitment=self.on_commitment is not None, storageSOPClasses=len(self._storage_classes),
                 additionalSOPClasses=list(self.config.additional_sop_classes) or None)

    def stop(self, timeout: float = 10.0) -> None:
        """Close the port, abort the associations still open and wait for their handlers to return.

        An instance still in transfer is not acknowledged; once this returns, nothing appends to the spool.
        """
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()  # returns once every connection's thread has, so no association starts after it
        associations = [assoc for assoc in server.active_associations if _end(assoc)]
        deadline = time.monotonic() + timeout
        for assoc in associations:
            assoc.join(max(0.0, deadline - time.monotonic()))

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if tls is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        load_key_pair(context, tls.certificate, tls.private_key)
        if tls.client_ca:
            context.load_verify_locations(tls.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    # -- associations ------------------------------------------------------------
    @staticmethod
    def _peer(assoc: Any) -> dict[str, Any]:
        return {"callingAETitle": assoc.requestor.ae_title, "calledAETitle": assoc.acceptor.ae_title or None,
                "peer": f"{assoc.requestor.address}:{assoc.requestor.port}"}

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        if not self.config.client_allowed(assoc.requestor.address):
            assoc.acse.send_reject(0x01, 0x01, 0x01)
            assoc.kill()  # as pynetdicom's own rejections do: returns once the A-ASSOCIATE-RJ is sent
            log.warning("association rejected", reason="client address not in dicom.clients", **self._peer(assoc))

    def _on_rejected(self, event: Any) -> None:
        primitive = event.assoc.acceptor.primitive
        reason = _REJECT_REASONS.get((primitive.result_source, primitive.diagnostic), "unknown")
        called = event.assoc.requestor.primitive.called_ae_title
        log.warning("association rejected", reason=reason, result=primitive.result, source=primitive.result_source,
                    diagnostic=primitive.diagnostic, requestedCalledAETitle=called, **self._peer(event.assoc))

    def _on_established(self, event: Any) -> None:
        with self._lock:
            self._associations[id(event.assoc)] = _AssociationCount()
        # An unknown or non-storage SOP class is refused here, per presentation context
        # (result 3, abstract syntax not supported): no C-STORE can then carry it.
        rejected = [{"abstractSyntax": str(cx.abstract_syntax), "result": cx.result}
                    for cx in event.assoc.rejected_contexts]
        log.info("association accepted", contexts=len(event.assoc.accepted_contexts),
                 rejectedContexts=rejected or None, **self._peer(event.assoc))

    def _on_ended(self, event: Any) -> None:
        with self._lock:
            count = self._associations.get(id(event.assoc))
            if count is None or count.logged_end:
                return
            count.logged_end = True
        if event.event.name == "EVT_RELEASED":
            log.info("association released", stored=count.stored, refused=count.refused, **self._peer(event.assoc))
        else:
            log.warning("association aborted (A-ABORT or connection dropped): an instance in transfer was not "
                        "acknowledged", stored=count.stored, refused=count.refused, **self._peer(event.assoc))

    def _on_closed(self, event: Any) -> None:
        with self._lock:
            count = self._associations.pop(id(event.assoc), None)
        if count is not None and not count.logged_end:
            log.warning("connection dropped without release or abort: an instance in transfer was not acknowledged",
                        stored=count.stored, refused=count.refused, **self._peer(event.assoc))

    def _on_echo(self, event: Any) -> int:
        log.info("C-ECHO", **self._peer(event.assoc))
        return STATUS["success"]

    # -- C-STORE -----------------------------------------------------------------
    def _on_store(self, event: Any) -> int:
        started = time.monotonic()
        request, assoc = event.request, event.assoc
        names = self.config.names
        fields = {"sopClassUID": str(request.AffectedSOPClassUID),
                  "sopInstanceUID": None if names.hashed else str(request.AffectedSOPInstanceUID), **self._peer(assoc)}
        status, reason, record = self._store(event)
        with self._lock:
            count = self._associations.get(id(assoc))
            if count is not None:
                if status == 0:
                    count.stored += 1
                else:
                    count.refused += 1
        if record is not None:
            self.on_spooled(record)
            log.info("instance received", object=names.uri(self.config.bucket, record.name), bytes=record.length,
                     transferSyntax=str(event.context.transfer_syntax),
                     seconds=round(time.monotonic() - started, 4), **fields)
        else:
            log.warning("C-STORE refused", status=f"0x{status:04X}", reason=hide_uids(reason) if names.hashed else reason,
                        **fields)
        return status

    def _store(self, event: Any) -> tuple[int, str, Record | None]:
        request = event.request
        sop_class, sop_instance = str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)
        transfer_syntax = str(event.context.transfer_syntax)
        if sop_class not in self._storage_classes or sop_class != str(event.context.abstract_syntax):
            return STATUS["sop_class_not_supported"], "SOP class is not a storage class accepted on this presentation context", None
        try:
            values = header_values(request.DataSet, transfer_syntax)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for undecodable bytes
            return STATUS["cannot_understand"], f"dataset does not decode: {type(exc).__name__}: {exc}"[:300], None
        for keyword, requested in (("SOPClassUID", sop_class), ("SOPInstanceUID", sop_instance)):
            if values.get(keyword) and values[keyword] != requested:
                return STATUS["does_not_match_sop_class"], f"the dataset's {keyword} differs from the request's", None
        if not values.get("SOPClassUID"):
            return STATUS["does_not_match_sop_class"], "missing SOPClassUID: every instance needs its SOP Class UID", None
        calling = event.assoc.requestor.ae_title
        values["CallingAETitle"] = calling
        values["CalledAETitle"] = self.config.ae_title
        try:
            name = self.namer.name(values, datetime.now(timezone.utc))
        except MissingUid as exc:
            return STATUS["does_not_match_sop_class"], f"{exc}: every instance needs Study, Series and SOP Instance UIDs", None
        except ValueError as exc:
            return STATUS["does_not_match_sop_class"], str(exc), None
        meta = file_meta(sop_class, sop_instance, transfer_syntax, calling)
        try:
            with request.DataSet.getbuffer() as dataset:  # the bytes as received, not copied
                record = self.spool.append(name, (meta, dataset), {"callingAETitle": calling,
                                                                   "sopInstanceUID": sop_instance})
        except SpoolFull as exc:
            return STATUS["out_of_resources"], f"spool full: {exc}", None
        except SpoolError as exc:
            return STATUS["out_of_resources"], f"spool write failed: {exc}", None
        return STATUS["success"], "", record


def _end(assoc: Any) -> bool:
    """Abort an association, or close a connection not yet asked for one; True: wait for it to return.

    pynetdicom cannot abort before the A-ASSOCIATE-RQ: its DUL thread dies of an invalid event (Evt15 in
    Sta2) and the association waits out the ACSE timeout. Such a connection has stored nothing: it is
    closed and its DUL thread stopped; the association's own (daemon) thread ends at its ACSE timeout.
    """
    if assoc.requestor.primitive is not None:
        assoc.abort()
        return True
    sock = assoc.dul.socket.socket
    if sock is not None:
        cut(sock)
    assoc._dul_ready.wait(5)  # the association's thread starts its DUL thread first: kill() stops a running one
    assoc.kill()  # returns once the DUL thread has seen the connection end
    return False
