"""A sender that dies part way through a large C-STORE: ``python -m tests.gateway.drop_mid_transfer PORT CALLING CALLED``.

It associates, starts sending a 4 MB instance and exits (the kernel closes the
connection) after its fifth P-DATA PDU, as a modality losing power would.
"""

from __future__ import annotations

import os
import sys

from pynetdicom import AE, build_context, evt
from pynetdicom.pdu import P_DATA_TF

from localstack import samples


def main() -> None:
    port, calling, called = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    (_, data), = samples.make_series(1, rows=1024, cols=2048)
    import io

    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(data))
    sent = {"pdata": 0}

    def on_pdu_sent(event: evt.Event) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            sent["pdata"] += 1
            if sent["pdata"] == 5:
                os._exit(0)

    ae = AE(ae_title=calling)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=[(evt.EVT_PDU_SENT, on_pdu_sent)],
                         contexts=[build_context(dataset.SOPClassUID, [dataset.file_meta.TransferSyntaxUID])])
    if not assoc.is_established:
        sys.exit("association not established")
    assoc.send_c_store(dataset)
    sys.exit("the transfer finished: the drop did not happen")


if __name__ == "__main__":
    main()
