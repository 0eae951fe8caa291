"""pynetdicom's threaded association server with the TLS handshake in each connection's own thread.

pynetdicom wraps an accepted socket in TLS inside ``get_request``, on its one accepting thread and with no
timeout: a peer that opens a TCP connection and sends nothing (a port scan, a load balancer's TCP probe)
holds that thread, and every new association waits until the peer goes away. A failed handshake also
vanishes without a word (socketserver drops the ``OSError`` of ``get_request``). Here the accepting thread
only accepts; each connection's thread performs its handshake within ``HANDSHAKE_SECONDS`` and logs one
line when it fails.
"""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from handlers import log

HANDSHAKE_SECONDS = 30.0


class HandshakeInThreadServer(ThreadedAssociationServer):
    """A ThreadedAssociationServer whose TLS handshake never blocks the accepting thread."""

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept only; the handshake waits for the connection's thread."""
        return self.socket.accept()  # type: ignore[union-attr]

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is not None:
            try:
                request.settimeout(HANDSHAKE_SECONDS)
                request = self.ssl_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except OSError as exc:  # ssl.SSLError and socket timeouts are OSErrors
                log.warning("TLS handshake failed", peer=f"{client_address[0]}:{client_address[1]}",
                            error=str(exc) or type(exc).__name__)
                request.close()
                return
        super().process_request_thread(request, client_address)
