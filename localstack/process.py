"""Daemon processes: start in a session of their own, record them, wait for them, stop them safely.

Every daemon is started with ``start_new_session=True``, so it leads a session
(its PID is the session ID) that also holds its children (gunicorn workers,
JVM helpers). Its stdout and stderr go to ``LOGDIR/NAME.log``; a PID file
``RUNDIR/NAME.pid`` (JSON) records the PID, the process start time (clock
ticks since boot, from ``/proc/PID/stat``), the boot it belongs to
(``/proc/sys/kernel/random/boot_id``) and, for information, the command line
it ran at first (from ``/proc/PID/cmdline``).

Stopping reads that record and signals every live process of the session:
SIGTERM, then SIGKILL after a timeout. A PID is signalled only when it is
provably ours:

* the leader is alive with the recorded start time, in the recorded boot, or
* the leader is gone and processes remain in its session (in the recorded
  boot). Linux never hands a PID out again while it is still some process's
  session ID, so these survivors can only be the leader's children.

A process is not identified by its command line: a daemon may rewrite it
(gunicorn's master calls itself ``gunicorn: master [...]`` when setproctitle is
installed) and is still ours. PID files written before the boot ID was
recorded are still read; for them the command line is compared as before.

A PID file whose PID now names another program (PID reuse after a reboot or a
long time) is dropped without signalling anything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

__all__ = [
    "ProcessRecord",
    "StartError",
    "alive",
    "boot_id",
    "is_ours",
    "log_tail",
    "owner_alive",
    "proc_info",
    "read_record",
    "session_members",
    "session_of",
    "signal_session",
    "signal_until_gone",
    "spawn",
    "stop_pidfile",
    "stop_record",
    "sweep_orphans",
    "wait_ready",
]


class StartError(RuntimeError):
    """A daemon did not start or did not become ready in time."""


@dataclass(frozen=True)
class ProcInfo:
    """What ``/proc/PID/stat`` says about a process."""

    pid: int
    state: str
    session: int
    start_ticks: int

    @property
    def live(self) -> bool:
        """False for a zombie whose threads have all exited (its files, ports included, are closed).

        A killed multi-threaded process shows its main thread as a zombie while
        other threads are still exiting and still hold its sockets: that one is live.
        """
        if self.state not in ("Z", "X"):
            return True
        try:
            return len(os.listdir(f"/proc/{self.pid}/task")) > 1
        except (FileNotFoundError, ProcessLookupError):
            return False


@dataclass(frozen=True)
class ProcessRecord:
    """What a PID file holds: enough to find the process again and prove it is ours."""

    name: str
    pid: int
    start_ticks: int
    cmdline: tuple[str, ...]
    log: str
    port: int | None = None
    #: A process whose death makes this one an orphan to sweep (pytest's PID), with its start time.
    owner: tuple[int, int] | None = None
    extra: dict[str, str] = field(default_factory=dict)
    #: ``/proc/sys/kernel/random/boot_id`` at spawn; None in PID files written before it was recorded.
    boot_id: str | None = None

    def to_json(self) -> str:
        """Serialise for the PID file."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ProcessRecord":
        """Parse a PID file's content."""
        data = json.loads(text)
        owner = data.get("owner")
        return cls(
            name=data["name"],
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            cmdline=tuple(data["cmdline"]),
            log=data["log"],
            port=data.get("port"),
            owner=(int(owner[0]), int(owner[1])) if owner else None,
            extra=dict(data.get("extra") or {}),
            boot_id=data.get("boot_id"),
        )


def boot_id() -> str | None:
    """This boot's random ID (``/proc/sys/kernel/random/boot_id``); None where the kernel has none."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def _other_boot(record: ProcessRecord) -> bool:
    """True if the record was written in an earlier boot: none of its processes can be alive."""
    return record.boot_id is not None and record.boot_id != boot_id()


def proc_info(pid: int) -> ProcInfo | None:
    """Read ``/proc/PID/stat``; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); session is field 6; starttime is field 22.
    return ProcInfo(pid=pid, state=fields[0], session=int(fields[3]), start_ticks=int(fields[19]))


def proc_cmdline(pid: int) -> tuple[str, ...] | None:
    """Read ``/proc/PID/cmdline``; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return tuple(part.decode("utf-8", "replace") for part in raw.split(b"\0")[:-1])


def alive(pid: int) -> bool:
    """True if ``pid`` names a running (not zombie) process."""
    info = proc_info(pid)
    return info is not None and info.live


def session_members(session_id: int) -> list[int]:
    """PIDs of the live (not zombie) processes whose session ID is ``session_id``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        info = proc_info(int(entry))
        if info is not None and info.session == session_id and info.live:
            members.append(info.pid)
    return members


def is_ours(record: ProcessRecord) -> bool:
    """True if ``record.pid`` is still the very process the record describes.

    A PID and a start time (in clock ticks since boot) name one process within a
    boot, whatever it has since written over its command line.
    """
    info = proc_info(record.pid)
    if info is None or not info.live or info.start_ticks != record.start_ticks:
        return False
    if record.boot_id is None:  # a PID file from before boot IDs were recorded
        return proc_cmdline(record.pid) == record.cmdline
    return not _other_boot(record)


def session_of(record: ProcessRecord) -> list[int]:
    """The live PIDs of ``record``'s session that are provably ours (the ones a stop signals)."""
    if _other_boot(record):
        return []  # written before a reboot: its PID and session ID now name other processes
    info = proc_info(record.pid)
    leader_alive = info is not None and info.live
    if leader_alive and not is_ours(record):
        return []  # the PID was reused by an unrelated program: never touch it
    return session_members(record.pid)


def signal_session(record: ProcessRecord, sig: int) -> list[int]:
    """Send ``sig`` to every live process of the record's session; return the PIDs signalled."""
    signalled = []
    for pid in session_of(record):
        try:
            os.kill(pid, sig)
            signalled.append(pid)
        except ProcessLookupError:
            pass
    return signalled


def signal_until_gone(
    record: ProcessRecord, sig: int, timeout: float, reap: Callable[[], None] | None = None
) -> tuple[list[int], bool]:
    """Send ``sig`` to every process of the record's session, including any forked meanwhile
    (a gunicorn worker born after the first look), until none is left or ``timeout`` passes.

    Returns the PIDs signalled and whether the session is empty.
    """
    signalled: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        if reap is not None:
            reap()
        for pid in session_of(record):
            if pid not in signalled or sig == signal.SIGKILL:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    continue
                if pid not in signalled:
                    signalled.append(pid)
        if not signalled or not session_members(record.pid):
            return signalled, True
        if time.monotonic() >= deadline:
            return signalled, False
        time.sleep(0.05)


def stop_record(record: ProcessRecord, timeout: float = 10.0, reap: Callable[[], None] | None = None) -> list[int]:
    """Stop the record's session: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Returns the PIDs that were signalled (empty if nothing of ours was running).
    ``reap`` is called while waiting, so a parent can collect its zombie child.
    """
    signal_session(record, signal.SIGCONT)  # a paused (SIGSTOPped) session would hold SIGTERM until the SIGKILL
    signalled, gone = signal_until_gone(record, signal.SIGTERM, timeout, reap)
    if not gone:
        killed, _ = signal_until_gone(record, signal.SIGKILL, 5.0, reap)
        signalled += [pid for pid in killed if pid not in signalled]
    return signalled


def read_record(pid_path: Path) -> ProcessRecord | None:
    """Parse a PID file; None if it is missing or unreadable (a crash mid-write)."""
    try:
        return ProcessRecord.from_json(pid_path.read_text())
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def stop_pidfile(pid_path: Path, timeout: float = 10.0) -> list[int]:
    """Stop what a PID file records (if it is still ours) and delete the file."""
    record = read_record(pid_path)
    signalled = stop_record(record, timeout) if record is not None else []
    pid_path.unlink(missing_ok=True)
    return signalled


def log_tail(log_path: Path | str, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file (for error messages)."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            text = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    pid_path: Path,
    port: int | None = None,
    owner: tuple[int, int] | None = None,
    extra: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Start ``argv`` as a daemon leading its own session; write its PID file.

    Output is appended to ``log_path`` (after a header line naming the command).
    Raises :class:`StartError` if the executable cannot be started.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        log.write(f"=== {stamp} starting {name}: {' '.join(argv)}\n".encode())
        log.flush()
        try:
            popen = subprocess.Popen(
                list(argv),
                cwd=str(cwd),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise StartError(f"{name}: cannot run {argv[0]!r}: {exc}") from exc
    # Popen returns once exec has begun; the kernel fills in the new command line
    # (for a script: its interpreter, then the script path) a moment later, and
    # /proc/PID/cmdline reads empty until then. (Recorded for information: the
    # process is identified by its PID, start time and boot.)
    info = proc_info(popen.pid)
    cmdline = proc_cmdline(popen.pid)
    deadline = time.monotonic() + 2.0
    while cmdline == () and time.monotonic() < deadline:
        time.sleep(0.001)
        cmdline = proc_cmdline(popen.pid)
    if info is None or cmdline is None:
        popen.wait()
        raise StartError(f"{name} exited at once (code {popen.returncode}); log {log_path}:\n{log_tail(log_path)}")
    record = ProcessRecord(
        name=name,
        pid=popen.pid,
        start_ticks=info.start_ticks,
        cmdline=cmdline,
        log=str(log_path),
        port=port,
        owner=owner,
        extra=dict(extra or {}),
        boot_id=boot_id(),
    )
    tmp = pid_path.with_suffix(".tmp")
    tmp.write_text(record.to_json())
    tmp.replace(pid_path)
    return popen, record


def wait_ready(
    name: str,
    popen: subprocess.Popen[bytes] | None,
    record: ProcessRecord,
    probe: Callable[[], bool],
    timeout: float,
) -> float:
    """Poll ``probe`` until it is true; return the seconds waited.

    Raises :class:`StartError` with the log's tail if the process exits first or
    ``timeout`` passes.
    """
    started = time.monotonic()
    delay = 0.05
    while True:
        exited = popen.poll() is not None if popen is not None else not is_ours(record)
        if exited:
            code = popen.returncode if popen is not None else "?"
            raise StartError(
                f"{name} exited before it was ready (code {code}); log {record.log}:\n{log_tail(record.log)}"
            )
        if probe():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise StartError(
                f"{name} not ready after {timeout:.0f} s (PID {record.pid}); log {record.log}:\n{log_tail(record.log)}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def owner_alive(record: ProcessRecord) -> bool:
    """False if the record names an owner process that has died (or whose PID was reused)."""
    if record.owner is None:
        return True
    if _other_boot(record):
        return False  # the owner ran before a reboot
    info = proc_info(record.owner[0])
    return info is not None and info.live and info.start_ticks == record.owner[1]


def sweep_orphans(pid_paths: Iterable[Path], timeout: float = 5.0) -> list[str]:
    """Stop the daemons whose owner died without stopping them (a killed pytest).

    Records without an owner (``make up``) and records whose owner lives (another
    test session running now) are left alone. Returns the names stopped.
    """
    stopped = []
    for pid_path in pid_paths:
        record = read_record(pid_path)
        if record is None or owner_alive(record):
            continue
        if stop_record(record, timeout):
            stopped.append(record.name)
        pid_path.unlink(missing_ok=True)
    return stopped
