"""The DICOM receiver alone (no bucket): stopping it while connections are half open, TLS handshakes."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from gateway.scp import Receiver
from gateway.spool import Spool

from .helpers import captured_logs, certificate, make_config, wait_for

DICOM = "dicom:\n  ae_title: GW-TEST\n  address: 127.0.0.1\n  port: 0\n  calling_ae_titles: [MODALITY1]\n" \
        "  max_associations: 1\n"


@pytest.fixture
def tls_section(tmp_path: Path) -> str:
    key, cert = certificate(tmp_path, "server")
    return f"tls:\n  certificate: {cert}\n  private_key: {key}\n"


def _receiver(tmp_path: Path, **sections: str) -> Receiver:
    config = make_config(tmp_path / "spool", "bkt", dicom=DICOM, **sections)
    spool = Spool(config.spool_directory, max_bytes=config.spool_max_bytes, segment_bytes=config.segment_bytes)
    receiver = Receiver(config, spool, lambda record: None)
    receiver.start()
    return receiver


@pytest.fixture
def tls_receiver(tmp_path: Path, tls_section: str) -> Iterator[Receiver]:
    receiver = _receiver(tmp_path, tls=tls_section)
    yield receiver
    receiver.stop()


def _threads_holding_the_process() -> set[threading.Thread]:
    """Non-daemon threads besides this one: pynetdicom's DUL threads among them hold the process at exit."""
    return {thread for thread in threading.enumerate() if not thread.daemon and thread is not threading.current_thread()}


def _assert_ended(connection: socket.socket) -> None:
    connection.settimeout(5)
    assert connection.recv(64) == b""  # closed, no A-ABORT: none can precede the A-ASSOCIATE-RQ


def test_stopping_does_not_wait_for_a_peer_that_never_starts_its_tls_handshake(tls_receiver: Receiver) -> None:
    """Before: server_close() joined each connection's thread, whose handshake waited 30 s for the peer:
    one TCP probe during a SIGTERM held the stop past Docker's 10 s."""
    with captured_logs() as logs, socket.create_connection(("127.0.0.1", tls_receiver.port)) as idle:
        time.sleep(0.3)  # the connection's thread is in its handshake
        started = time.monotonic()
        tls_receiver.stop()
        assert time.monotonic() - started < 3
        idle.settimeout(5)
        assert idle.recv(1) == b""  # the gateway closed it
    assert not [line for line in logs() if line["severity"] != "INFO"]  # a stop is no handshake failure


def test_handshakes_beyond_twice_max_associations_are_refused_at_once(tls_receiver: Receiver) -> None:
    """Before: each TCP connection held a thread for 30 s, however many arrived."""
    with captured_logs() as logs:
        held = [socket.create_connection(("127.0.0.1", tls_receiver.port)) for _ in range(2)]  # the limit: 2 × 1
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", tls_receiver.port)) as extra:
            extra.settimeout(5)
            assert extra.recv(1) == b""
        [refused] = wait_for(lambda: [line for line in logs() if line["message"].startswith("TLS connection refused")],
                             timeout=5, what="the refusal's log line")
        for sock in held:
            sock.close()
    assert refused["severity"] == "WARNING" and refused["limit"] == 2 and "dicom.max_associations" in refused["fix"]


def test_stopping_closes_a_connection_that_never_asked_for_an_association(tmp_path: Path) -> None:
    """Before: pynetdicom's abort() before the A-ASSOCIATE-RQ killed the DUL thread with an InvalidEventError
    traceback, and stop() waited its 10 s for the association."""
    receiver = _receiver(tmp_path)
    before = _threads_holding_the_process()
    with captured_logs() as logs, socket.create_connection(("127.0.0.1", receiver.port)) as idle:
        time.sleep(0.3)  # the association waits for its A-ASSOCIATE-RQ
        started = time.monotonic()
        receiver.stop()
        assert time.monotonic() - started < 3
        _assert_ended(idle)
    assert _threads_holding_the_process() <= before
    assert not [line for line in logs() if line["severity"] != "INFO"]


def test_an_association_starting_while_the_receiver_stops_is_ended(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: stop() listed the associations before closing the port; one whose connection's thread was
    still starting it was left running, and could append to the spool after stop()."""
    from pynetdicom.transport import RequestHandler

    server_closing, release = threading.Event(), threading.Event()
    start_association = RequestHandler.handle

    def delayed_handle(handler: Any) -> None:
        release.wait(10)
        start_association(handler)

    monkeypatch.setattr(RequestHandler, "handle", delayed_handle)
    receiver = _receiver(tmp_path)
    server = receiver._server
    close_server = server.server_close

    def noted_close() -> None:
        server_closing.set()
        close_server()

    monkeypatch.setattr(server, "server_close", noted_close)
    before = _threads_holding_the_process()
    with socket.create_connection(("127.0.0.1", receiver.port)) as connection:
        time.sleep(0.3)  # the connection's thread waits to start its association
        stopping = threading.Thread(target=receiver.stop, daemon=True)
        stopping.start()
        assert server_closing.wait(5)
        release.set()  # the association starts while the port closes
        stopping.join(5)
        assert not stopping.is_alive()
        _assert_ended(connection)
    assert _threads_holding_the_process() <= before
