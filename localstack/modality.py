"""A modality's side of storage commitment (pynetdicom): ask with an N-ACTION, take the N-EVENT-REPORT.

Used by ``make demo`` and the gateway's tests, as a scanner that waits for the
archive's commitment before deleting its copies would.
"""

from __future__ import annotations

import queue
from contextlib import contextmanager
from typing import Any, Iterator

from gateway.commitment import COMMITMENT_INSTANCE, sop_reference


@contextmanager
def commitment_reports(ae_title: str, port: int = 0) -> Iterator[tuple[int, queue.Queue]]:
    """Listen on 127.0.0.1 (``port``, 0: any) as ``ae_title`` for reports: (the port, a queue of
    (event type, the reporting AE title, the event information))."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StorageCommitmentPushModel

    reports: queue.Queue = queue.Queue()

    def on_report(event: Any) -> tuple[int, None]:
        reports.put((event.request.EventTypeID, event.assoc.requestor.ae_title, event.event_information))
        return 0x0000, None

    ae = AE(ae_title=ae_title)
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        yield server.server_address[1], reports
    finally:
        server.shutdown()


def request_commitment(host: str, port: int, called: str, calling: str, references: list[tuple[str, str]],
                       transaction: str) -> int:
    """Send the N-ACTION naming ``references`` (SOP Class UID, SOP Instance UID); the status answered, -1 if none."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StorageCommitmentPushModel

    request = Dataset()
    request.TransactionUID = transaction
    request.ReferencedSOPSequence = [sop_reference(sop_class, sop_instance) for sop_class, sop_instance in references]
    ae = AE(ae_title=calling)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        return -1
    try:
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
    finally:
        assoc.release()
    return int(status.Status) if status is not None and "Status" in status else -1
