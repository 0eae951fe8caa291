"""gateway/wakeups.py: pynetdicom's reactor sleeps end early when there is work, never otherwise.

The first tests drive :class:`ReactorTime` with stand-in reactor threads (it knows
a reactor loop by its code object, so any class with the loop methods serves):
each asks for a long sleep (5 s) that must end within a fraction of it once
its work arrives, or a short one that must last in full when none does. Then
the real pynetdicom: the shim is installed on its reactors and used by them, it
refuses another version or a changed loop (one log line, plain sleeps stay), and
a gateway whose shim is refused still stores instances.
"""

from __future__ import annotations

import gc
import queue
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from gateway import wakeups
from gateway.config import ConfigError, parse
from gateway.wakeups import ReactorTime
from localstack import samples

from .helpers import captured_logs, config_text, gcs_inbox_factory, make_config, read_dataset, running_gateway, send, wait_for

LONG = 5.0  # a sleep that work must cut short (well within it, even on a loaded machine)
SHORT = 0.3  # a sleep that must last in full when there is no work


class Transport:
    """The two attributes of pynetdicom's AssociationSocket that the DUL's wait reads."""

    def __init__(self, sock: socket.socket | None, connected: bool = True) -> None:
        self.socket = sock
        self._is_connected = connected


class Association(threading.Thread):
    """Stands in for pynetdicom's Association: ``_run_reactor`` sleeps once through ``clock``."""

    def __init__(self, clock: ReactorTime, asked: float = LONG) -> None:
        super().__init__(daemon=True)
        self.clock, self.asked, self.slept = clock, asked, -1.0
        self.dimse = SimpleNamespace(msg_queue=queue.Queue())
        self.dul: Dul | None = None

    def run(self) -> None:
        self._run_reactor()

    def _run_reactor(self) -> None:
        started = time.monotonic()
        self.clock.sleep(self.asked)
        self.slept = time.monotonic() - started


class Dul(threading.Thread):
    """Stands in for pynetdicom's DULServiceProvider: ``run_reactor`` sleeps once through ``clock``."""

    def __init__(self, clock: ReactorTime, assoc: Association, sock: socket.socket | None = None,
                 asked: float = LONG, connected: bool = True) -> None:
        super().__init__(daemon=True)
        self.clock, self.asked, self.slept = clock, asked, -1.0
        self.assoc = assoc
        assoc.dul = self
        self.socket = Transport(sock, connected)
        self.to_provider_queue: queue.Queue[Any] = queue.Queue()

    def run(self) -> None:
        self.run_reactor()

    def run_reactor(self) -> None:
        started = time.monotonic()
        self.clock.sleep(self.asked)
        self.slept = time.monotonic() - started


@pytest.fixture
def clock() -> ReactorTime:
    return ReactorTime(Association, Dul)


@pytest.fixture
def peer() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def _waiting(clock: ReactorTime, assoc: Association) -> None:
    """Until the thread sleeping for ``assoc`` has made its links (on its first sleep, just before it waits)."""
    wait_for(lambda: clock._links.get(assoc) is not None, timeout=10, what="the reactor to wait")
    time.sleep(0.05)


def test_association_reactor_wakes_when_its_dul_finds_a_message(clock: ReactorTime, peer: Any) -> None:
    assoc = Association(clock)
    dul = Dul(clock, assoc, peer[0], asked=0.01)
    assoc.start()
    _waiting(clock, assoc)
    assoc.dimse.msg_queue.put((1, "C-STORE-RQ"))  # what pynetdicom's DUL does once a message is decoded...
    dul.start()  # ...then it goes idle: its sleep wakes the association's reactor
    assoc.join(LONG + 5)
    assert 0 <= assoc.slept < LONG / 2


def test_dul_wakes_when_its_association_queues_something_to_send(clock: ReactorTime, peer: Any) -> None:
    assoc = Association(clock, asked=0.01)
    dul = Dul(clock, assoc, peer[0])
    dul.start()
    _waiting(clock, assoc)
    dul.to_provider_queue.put("P-DATA (the C-STORE response)")  # the association's reactor served a request...
    assoc.start()  # ...and its next sleep wakes the DUL, which sends the response
    dul.join(LONG + 5)
    assert 0 <= dul.slept < LONG / 2


def test_dul_wakes_when_the_peer_sends(clock: ReactorTime, peer: Any) -> None:
    dul = Dul(clock, Association(clock), peer[0])
    dul.start()
    _waiting(clock, dul.assoc)
    peer[1].send(b"\x04")  # the first byte of a P-DATA-TF PDU
    dul.join(LONG + 5)
    assert 0 <= dul.slept < LONG / 2


def test_without_work_both_sleep_what_pynetdicom_asked(clock: ReactorTime, peer: Any) -> None:
    assoc = Association(clock, asked=SHORT)
    dul = Dul(clock, assoc, peer[0], asked=SHORT)
    assoc.start()
    dul.start()
    assoc.join(SHORT + 10)
    dul.join(SHORT + 10)
    assert assoc.slept >= SHORT - 0.005 and dul.slept >= SHORT - 0.005  # an idle association costs no more CPU


def test_a_socket_not_connected_does_not_end_the_wait(clock: ReactorTime, peer: Any) -> None:
    """As AssociationSocket.ready: pynetdicom reads no unconnected socket, so its readiness must not spin the DUL."""
    peer[1].close()  # ours now polls readable (end of file), forever
    dul = Dul(clock, Association(clock), peer[0], asked=SHORT, connected=False)
    dul.start()
    dul.join(SHORT + 10)
    assert dul.slept >= SHORT - 0.005


def test_a_closed_socket_falls_back_to_the_plain_sleep(clock: ReactorTime, peer: Any) -> None:
    peer[0].close()  # select refuses it: the wait sleeps what was asked, as time.sleep would
    dul = Dul(clock, Association(clock), peer[0], asked=SHORT)
    dul.start()
    dul.join(SHORT + 10)
    assert dul.slept >= SHORT - 0.005


def test_other_sleeps_are_the_real_ones(clock: ReactorTime) -> None:
    started = time.monotonic()
    clock.sleep(0.05)  # not called from a reactor loop
    assert time.monotonic() - started >= 0.05
    assert len(clock._links) == 0
    assert clock.monotonic is time.monotonic  # everything else is the time module's


# -- the real pynetdicom -----------------------------------------------------------
@pytest.fixture
def plain_pynetdicom() -> Iterator[None]:
    wakeups.uninstall()
    yield
    wakeups.uninstall()


def test_installed_on_pynetdicoms_reactors_and_used_by_them(plain_pynetdicom: None) -> None:
    from pynetdicom import AE, association, dul
    from pynetdicom.sop_class import Verification

    assert wakeups.install() and wakeups.installed()
    shim = association.time
    assert isinstance(shim, ReactorTime) and dul.time is shim
    ae = AE(ae_title="WAKE-SCP")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        scu = AE(ae_title="WAKE-SCU")
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="WAKE-SCP")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        acceptor = server.active_associations[0]
        # Both ends' reactor threads found their loops' sleeps: pynetdicom's code objects are the ones it knows.
        wait_for(lambda: acceptor in shim._links and assoc in shim._links, timeout=10, what="links of both ends")
        links = shim._links[acceptor]
        assoc.release()
        wait_for(lambda: not server.active_associations, timeout=10, what="the release")
        acceptor.join(10)
        del acceptor, assoc
        gc.collect()
        assert links.reader.fileno() == -1  # closed with the association
    finally:
        server.shutdown()
    wakeups.uninstall()
    assert association.time is time and dul.time is time


@pytest.mark.parametrize("change", ["version", "loop"])
def test_install_refuses_a_pynetdicom_it_was_not_written_for(plain_pynetdicom: None, monkeypatch: Any,
                                                              change: str) -> None:
    import pynetdicom
    from pynetdicom import association, dul

    if change == "version":
        monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    else:
        monkeypatch.setattr(dul.DULServiceProvider, "run_reactor", lambda self: None)  # a loop that no longer sleeps
    with captured_logs() as logs:
        assert wakeups.install() is False
    assert association.time is time and dul.time is time and not wakeups.installed()
    [line] = [line for line in logs() if line["message"].startswith("pynetdicom reactor wake-ups not installed")]
    assert line["severity"] == "WARNING"
    assert ("3.1.0" if change == "version" else "DULServiceProvider.run_reactor") in line["reason"]


def test_reactor_wakeups_is_a_boolean_in_the_config(tmp_path: Path) -> None:
    dicom = "dicom:\n  ae_title: GW\n  calling_ae_titles: [A]\n  reactor_wakeups: {}\n"
    assert parse(config_text(tmp_path, "bkt", dicom=dicom.format("false")), "gw.yaml", {}).reactor_wakeups is False
    assert parse(config_text(tmp_path, "bkt", dicom=dicom.replace("  reactor_wakeups: {}\n", "")), "gw.yaml",
                 {}).reactor_wakeups is True
    with pytest.raises(ConfigError) as caught:
        parse(config_text(tmp_path, "bkt", dicom=dicom.format("sometimes")), "gw.yaml", {})
    assert caught.value.problems[0].startswith("gw.yaml:4: reactor_wakeups must be true")


@pytest.mark.stack
@pytest.mark.parametrize("setting", ["refused", "off"])
def test_gateway_stores_with_pynetdicoms_own_sleeps(plain_pynetdicom: None, monkeypatch: Any, tmp_path: Path,
                                                    bucket: str, fake_gcs: Any, setting: str) -> None:
    import pynetdicom

    sections = {}
    if setting == "refused":
        monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    else:
        sections["dicom"] = ("dicom:\n  ae_title: GW-TEST\n  address: 127.0.0.1\n  port: 0\n"
                             "  calling_ae_titles: [MODALITY1]\n  reactor_wakeups: false\n")
    config = make_config(tmp_path / "spool", bucket, **sections)
    study = samples.make_study(1, 3, modality="CT")
    with captured_logs() as logs, running_gateway(config, gcs_inbox_factory(bucket, fake_gcs.url)) as gateway:
        assert send(gateway.receiver.port, [read_dataset(data) for _, data in study]) == [0x0000] * 3
        assert not wakeups.installed()
    refusals = [line for line in logs() if line["message"].startswith("pynetdicom reactor wake-ups not installed")]
    assert len(refusals) == (1 if setting == "refused" else 0)
