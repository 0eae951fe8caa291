"""pynetdicom's threaded association server with the TLS handshake in each connection's own thread.

pynetdicom wraps an accepted socket in TLS inside ``get_request``, on its one accepting thread and with no
timeout: a peer that opens a TCP connection and sends nothing (a port scan, a load balancer's TCP probe)
holds that thread, and every new association waits until the peer goes away. A failed handshake also
vanishes without a word (socketserver drops the ``OSError`` of ``get_request``). Here the accepting thread
only accepts; each connection's thread performs its handshake within ``HANDSHAKE_SECONDS`` and logs one
line when it fails. At most ``2 × maximum_associations`` handshakes run at once; a connection beyond is
closed at once. Closing the server cuts the handshakes in progress, so ``shutdown()`` waits for no idle
peer and no association starts once it has returned.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from handlers import log

HANDSHAKE_SECONDS = 30.0


def cut(sock: socket.socket) -> None:
    """End a connection both ways without closing it: the thread reading it sees the end, and closes it.

    The plain socket's shutdown, also for TLS: SSLSocket.shutdown would drop the TLS object that thread uses.
    """
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


class HandshakeInThreadServer(ThreadedAssociationServer):
    """A ThreadedAssociationServer whose TLS handshake never blocks the accepting thread nor its closing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._handshakes_lock = threading.Lock()
        self._handshaking: set[socket.socket] = set()  # guarded by the lock, as is _closing
        self._closing = False
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept only; the handshake waits for the connection's thread."""
        return self.socket.accept()  # type: ignore[union-attr]

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is not None:
            request = self._handshake(request, f"{client_address[0]}:{client_address[1]}")
            if request is None:
                return
        super().process_request_thread(request, client_address)

    def server_close(self) -> None:
        """Close the port and cut the handshakes in progress, then wait for the connections' threads."""
        with self._handshakes_lock:
            self._closing = True
            for sock in self._handshaking:
                cut(sock)
        super().server_close()

    def _handshake(self, request: socket.socket, peer: str) -> socket.socket | None:
        """The connection in TLS, or None: closed, and logged unless the server is closing."""
        limit = 2 * self.ae.maximum_associations
        sock, admitted, error = request, False, None
        try:
            request.settimeout(HANDSHAKE_SECONDS)
            sock = self.ssl_context.wrap_socket(request, server_side=True,  # type: ignore[union-attr]
                                                do_handshake_on_connect=False)  # no I/O yet
            with self._handshakes_lock:
                admitted = not self._closing and len(self._handshaking) < limit
                if admitted:
                    self._handshaking.add(sock)
            if admitted:
                sock.do_handshake()
                sock.settimeout(None)
        except OSError as exc:  # ssl.SSLError and socket timeouts are OSErrors
            error = exc
        finally:
            with self._handshakes_lock:
                self._handshaking.discard(sock)
                closing = self._closing
        if admitted and error is None and not closing:
            return sock
        sock.close()
        if closing:
            return None
        if error is not None:
            log.warning("TLS handshake failed", peer=peer, error=str(error) or type(error).__name__)
        else:
            log.warning("TLS connection refused: too many handshakes in progress", peer=peer, limit=limit,
                        fix="raise dicom.max_associations if this many modalities connect at once")
        return None
