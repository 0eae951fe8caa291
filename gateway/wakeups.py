"""Wake pynetdicom's two polling reactors when there is work, instead of after a fixed 1 ms.

pynetdicom (3.0.4) runs each association as two threads that poll:

* the association's reactor (``Association._run_reactor``) calls ``time.sleep(0.001)``
  at the top of every loop, then looks for a complete DIMSE message to serve;
* the DUL reactor (``DULServiceProvider.run_reactor``) calls
  ``time.sleep(self._run_loop_delay)`` (0.001) after a loop that found nothing to do:
  no primitive to send, no data on the socket.

A C-STORE pays both: its request waits for the association's sleep to end, its
response for the DUL's. On Linux each sleep lasts about 1.1 ms, two thirds of the
3.3 ms a small instance took. pynetdicom offers no setting for either (only the
private ``_run_loop_delay`` of the DUL, and shortening it costs CPU on every idle
association), so this module replaces the module-global ``time`` that
``pynetdicom.association`` and ``pynetdicom.dul`` call with :class:`ReactorTime`:
the real ``time`` module in everything but ``sleep``, and ``sleep`` changed only
when it is called from one of those two loops (recognised by the caller's code
object; every other sleep in those modules is the real one). There it becomes a
wait for the work the loop polls for, through two links per association:

* the DUL reactor waits in ``select`` on the association's socket (data from the
  peer) and on a socket pair that the association's reactor writes a byte to when,
  at its own sleep, it finds a primitive queued to send (the response to the
  request it just served);
* the association's reactor waits on a lock that the DUL thread releases when, at
  its sleep (idle once a request is read), it finds a DIMSE message queued.
  (``EVT_DIMSE_RECV`` would be too early a signal: it fires before pynetdicom
  queues the message.)

Why this keeps pynetdicom's behaviour: both loops re-check everything after a
sleep (they are polling loops), and a wait here never lasts longer than the sleep
pynetdicom asked for (the same timeout); it can only end earlier. So the protocol,
its state machine, its timers and its threads are pynetdicom's, unchanged; only
latency drops. An idle association still waits the full delay per loop, so it
wakes as often as with the plain sleep. Anything unexpected at a call (a socket
closed under us, an attribute missing) falls back to the real ``time.sleep``.
What is not woken stays as fast as before: the SCU side's requests, sent from the
user's thread while pynetdicom pauses the reactor, wait for the DUL's poll.

:func:`install` refuses (one log line, plain sleeps stay) when pynetdicom is not
the version this was written against or the attributes it relies on are missing.
"""

from __future__ import annotations

import collections
import queue
import select
import socket
import ssl
import sys
import threading
import time
import types
import weakref
from typing import Any

from handlers import log

__all__ = ["PYNETDICOM_VERSION", "ReactorTime", "install", "installed", "uninstall"]

#: The pynetdicom release whose reactors this module was read against (requirements-gateway.txt pins it).
PYNETDICOM_VERSION = "3.0.4"
_MODULES = ("pynetdicom.association", "pynetdicom.dul")
_lock = threading.Lock()


class _Links:
    """How one association's two reactor threads wake each other; shared by both, closed with the association."""

    def __init__(self, assoc: Any) -> None:
        self.messages = assoc.dimse.msg_queue.queue  # decoded DIMSE messages, for the association's reactor
        self.outgoing = assoc.dul.to_provider_queue.queue  # primitives the DUL is to send
        # Locked: nothing new for the association's reactor; released (by the DUL thread): a message is queued.
        self.reactor = threading.Lock()
        self.reactor.acquire()
        # A byte in the pair ends the DUL thread's select: the association's reactor queued something to send.
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def wake_reactor(self) -> None:
        if self.reactor.locked():
            try:
                self.reactor.release()
            except RuntimeError:  # released in between: already awake
                pass

    def wake_dul(self) -> None:
        try:
            self.writer.send(b"\0")
        except OSError:  # buffer full of unread wake-ups, or closed: nothing to add
            pass

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except OSError:  # BlockingIOError: empty
            pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


class ReactorTime(types.ModuleType):
    """Stands in for ``time`` in pynetdicom's association and DUL modules; only ``sleep`` differs."""

    def __init__(self, association_class: type, dul_class: type) -> None:
        super().__init__("time", "the time module, except sleep: see gateway.wakeups")
        self._association_class = association_class
        self._dul_class = dul_class
        self._association_loop = association_class._run_reactor.__code__
        self._dul_loop = dul_class.run_reactor.__code__
        self._links: weakref.WeakKeyDictionary[Any, _Links] = weakref.WeakKeyDictionary()
        self._links_lock = threading.Lock()
        self._thread = threading.local()  # .links: the calling reactor thread's _Links, or None: plain sleeps

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        caller = sys._getframe(1).f_code
        if caller is self._association_loop:
            self._association_wait(seconds)
        elif caller is self._dul_loop:
            self._dul_wait(seconds)
        else:
            time.sleep(seconds)

    def _association_wait(self, seconds: float) -> None:
        """The association's reactor: wake the DUL if something waits to be sent, then wait for a DIMSE message."""
        try:
            links = self._thread.links
        except AttributeError:
            links = self._links_of_this_thread(dul=False)
        if links is None:
            time.sleep(seconds)
            return
        if links.outgoing:  # the response to the request just served
            links.wake_dul()
        if not links.messages:
            links.reactor.acquire(True, seconds)

    def _dul_wait(self, seconds: float) -> None:
        """The DUL reactor: wake the association's reactor if a message waits, then wait for data or a wake-up."""
        try:
            links = self._thread.links
        except AttributeError:
            links = self._links_of_this_thread(dul=True)
        if links is None:
            time.sleep(seconds)
            return
        if links.messages:  # a request just decoded
            links.wake_reactor()
        started = time.monotonic()
        try:
            transport = threading.current_thread().socket
            peer = transport.socket
            # As AssociationSocket.ready: a socket not (yet, or no longer) connected is not read,
            # so it must not end the wait either (an unconnected socket polls readable).
            if peer is None or transport._is_connected is not True:
                waits_on = [links.reader]
            elif isinstance(peer, ssl.SSLSocket) and peer.pending():  # decrypted bytes select cannot see
                return
            else:
                waits_on = [links.reader, peer]
            readable = select.select(waits_on, (), (), seconds)[0]
            if readable and readable[0] is links.reader:
                links.drain()
        except Exception:  # noqa: BLE001 - e.g. the socket closed under us: sleep what is left, as pynetdicom would
            remaining = seconds - (time.monotonic() - started)
            if remaining > 0:
                time.sleep(remaining)

    def _links_of_this_thread(self, dul: bool) -> _Links | None:
        """Find or make the calling reactor thread's links, on its first sleep; None: not a reactor thread."""
        links = None
        thread = threading.current_thread()
        if isinstance(thread, self._dul_class if dul else self._association_class):
            try:
                assoc = thread.assoc if dul else thread
                with self._links_lock:
                    links = self._links.get(assoc)
                    if links is None:
                        links = self._links[assoc] = _Links(assoc)
                        weakref.finalize(assoc, links.close)  # the association is gone: nobody can wake through them
            except Exception:  # noqa: BLE001 - not the objects this was written against: plain sleeps
                links = None
        self._thread.links = links
        return links


def _refusal() -> str | None:
    """Why the wake-ups cannot be installed on this pynetdicom, or None."""
    try:
        import pynetdicom
        from pynetdicom import association, dimse, dul, transport
    except ImportError as exc:
        return f"pynetdicom does not import ({exc})"
    if pynetdicom.__version__ != PYNETDICOM_VERSION:
        return (f"pynetdicom is {pynetdicom.__version__}, these wake-ups were written against {PYNETDICOM_VERSION}: "
                "check its reactors (Association._run_reactor, DULServiceProvider.run_reactor), then update gateway/wakeups.py")
    for module in (association, dul):
        current = getattr(module, "time", None)
        if current is not time and not isinstance(current, ReactorTime):
            return f"{module.__name__}.time is not the time module"
    loops = {"Association._run_reactor": getattr(getattr(association, "Association", None), "_run_reactor", None),
             "DULServiceProvider.run_reactor": getattr(getattr(dul, "DULServiceProvider", None), "run_reactor", None)}
    for name, loop in loops.items():
        code = getattr(loop, "__code__", None)
        if code is None or "sleep" not in code.co_names or "time" not in code.co_names:
            return f"pynetdicom's {name} no longer calls time.sleep"
    # The attributes the links read, as each class's __init__ sets them.
    needs = ((association.Association, ("dul", "dimse")), (dimse.DIMSEServiceProvider, ("msg_queue",)),
             (dul.DULServiceProvider, ("to_provider_queue", "socket", "_assoc")),
             (transport.AssociationSocket, ("socket", "_is_connected")))
    for cls, names in needs:
        missing = [name for name in names if name not in cls.__init__.__code__.co_names]
        if missing:
            return f"pynetdicom's {cls.__name__} no longer sets {', '.join(missing)}"
    if not isinstance(queue.Queue().queue, collections.deque):
        return "queue.Queue keeps its items elsewhere than in .queue"
    return None


def install() -> bool:
    """Put :class:`ReactorTime` in pynetdicom's association and DUL modules; False (and a log line) if refused."""
    with _lock:
        if installed():
            return True
        reason = _refusal()
        if reason is not None:
            log.warning("pynetdicom reactor wake-ups not installed: associations poll with pynetdicom's own "
                        "1 ms sleeps (slower, still correct)", reason=reason)
            return False
        from pynetdicom import association, dul

        shim = ReactorTime(association.Association, dul.DULServiceProvider)
        association.time = shim
        dul.time = shim
        log.info("pynetdicom reactor wake-ups installed", pynetdicom=PYNETDICOM_VERSION)
        return True


def installed() -> bool:
    """True while pynetdicom's reactors sleep through :class:`ReactorTime`."""
    modules = [sys.modules.get(name) for name in _MODULES]
    return all(module is not None and isinstance(getattr(module, "time", None), ReactorTime) for module in modules)


def uninstall() -> None:
    """Give pynetdicom back the real ``time`` module (associations already running switch at their next sleep)."""
    with _lock:
        for name in _MODULES:
            module = sys.modules.get(name)
            if module is not None and isinstance(getattr(module, "time", None), ReactorTime):
                module.time = time
