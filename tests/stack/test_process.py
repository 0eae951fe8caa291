"""Daemons by PID file: whole sessions stopped, survivors found, reused PIDs never touched."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from localstack.ports import PortBusyError, free_port, port_is_open
from localstack.process import (
    ProcessRecord,
    StartError,
    alive,
    is_ours,
    proc_info,
    read_record,
    session_members,
    session_of,
    spawn,
    stop_pidfile,
    stop_record,
    sweep_orphans,
)
from localstack.services import Service, base_env, start_fake_gcs, start_function

RECORDING_FUNCTION = Path(__file__).with_name("recording_function.py")
PARENT_WITH_CHILD = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"


def spawn_python(tmp_path: Path, name: str, code: str, owner: tuple[int, int] | None = None):
    popen, record = spawn(
        name,
        [sys.executable, "-c", code],
        env=base_env(),
        cwd=tmp_path,
        log_path=tmp_path / "logs" / f"{name}.log",
        pid_path=tmp_path / "run" / f"{name}.pid",
        owner=owner,
    )
    return popen, record


def wait_members(session: int, count: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(members := session_members(session)) < count:
        assert time.monotonic() < deadline, members
        time.sleep(0.02)
    return members


def test_stop_ends_the_whole_session_and_removes_the_pid_file(tmp_path: Path) -> None:
    popen, record = spawn_python(tmp_path, "parent", PARENT_WITH_CHILD)
    assert read_record(tmp_path / "run" / "parent.pid") == record
    assert record.cmdline == (sys.executable, "-c", PARENT_WITH_CHILD)
    members = wait_members(record.pid, 2)
    signalled = stop_pidfile(tmp_path / "run" / "parent.pid")
    popen.wait(timeout=5)
    assert sorted(signalled) == sorted(members)
    assert not any(alive(pid) for pid in members)
    assert not (tmp_path / "run" / "parent.pid").exists()


def test_survivors_of_a_killed_leader_are_stopped(tmp_path: Path) -> None:
    popen, record = spawn_python(tmp_path, "parent", PARENT_WITH_CHILD)
    (child,) = [pid for pid in wait_members(record.pid, 2) if pid != record.pid]
    os.kill(record.pid, signal.SIGKILL)  # a crash of the leader alone: its child lives on
    popen.wait(timeout=5)
    assert alive(child)
    assert stop_record(record, timeout=5) == [child]
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child)


def test_a_pid_now_naming_another_process_is_never_signalled(tmp_path: Path) -> None:
    victim = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        info = proc_info(victim.pid)
        assert info is not None
        popen, record = spawn_python(tmp_path, "ours", "import time; time.sleep(300)")
        stop_record(record)
        popen.wait(timeout=5)
        # The same PID with another start time (PID reuse), or with its start time but in another boot: not ours.
        reused = replace(record, pid=victim.pid, start_ticks=info.start_ticks + 1, cmdline=("sleep", "300"))
        rebooted = replace(record, pid=victim.pid, start_ticks=info.start_ticks, cmdline=("sleep", "300"),
                           boot_id="00000000-0000-0000-0000-000000000000")
        # A PID file written before boot IDs were recorded: its command line still decides.
        legacy = json.loads(record.to_json())
        del legacy["boot_id"]
        legacy.update(pid=victim.pid, start_ticks=info.start_ticks)
        old_format = ProcessRecord.from_json(json.dumps(legacy))
        assert old_format.boot_id is None
        for stale in (reused, rebooted, old_format):
            assert not is_ours(stale) and session_of(stale) == []
            assert stop_record(stale, timeout=1) == []
        assert victim.poll() is None
        assert is_ours(replace(old_format, cmdline=("sleep", "300")))
    finally:
        victim.kill()
        victim.wait()


def test_a_daemon_that_rewrites_its_command_line_is_still_ours(tmp_path: Path) -> None:
    # As gunicorn's master does ("gunicorn: master [...]") when setproctitle is importable:
    # perl's $0 rewrites /proc/PID/cmdline.
    port = free_port()
    code = (f'$0 = "gunicorn: master [main]"; use IO::Socket::INET; '
            f'my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => {port}, Listen => 5, '
            'ReuseAddr => 1) or die; sleep 300;')
    service = Service(name="renamer", argv=["perl", "-e", code], port=port, url=f"http://127.0.0.1:{port}",
                      workdir=tmp_path, process_env=base_env(), ready_timeout=10)
    service.start()
    try:
        pid = service.pid
        assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"gunicorn: master [main]")
        assert service.running()
        assert service.start().pid == pid  # running: not started a second time into its busy port
    finally:
        service.stop(timeout=5)
        leftovers = session_members(service.pid)
        for member in leftovers:  # a stop that did not take it for ours must not leave it running
            os.kill(member, signal.SIGKILL)
    assert not leftovers and not service.pid_path.exists()


def test_sigterm_ignored_escalates_to_sigkill(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(300)"
    popen, record = spawn_python(tmp_path, "stubborn", code)
    deadline = time.monotonic() + 10
    while "ready" not in (tmp_path / "logs" / "stubborn.log").read_text().splitlines():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    started = time.monotonic()
    assert stop_record(record, timeout=0.5) == [record.pid]
    assert popen.wait(timeout=5) == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_a_paused_session_stops_on_sigterm_without_waiting_for_the_sigkill(tmp_path: Path) -> None:
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
            "print('ready', flush=True); time.sleep(300)")
    popen, record = spawn_python(tmp_path, "paused", code)
    deadline = time.monotonic() + 10
    while "ready" not in (tmp_path / "logs" / "paused.log").read_text().splitlines():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(record.pid, signal.SIGSTOP)
    started = time.monotonic()
    stop_record(record, timeout=5.0)
    assert popen.wait(timeout=5) == 0, "it handled SIGTERM (exit 0), it was not killed"
    assert time.monotonic() - started < 2


def test_a_service_that_never_gets_ready_is_stopped_not_left_running(tmp_path: Path) -> None:
    port = free_port()
    service = Service(name="never-ready", argv=[sys.executable, "-c", "import time; time.sleep(300)"], port=port,
                      url=f"http://127.0.0.1:{port}", workdir=tmp_path, process_env=base_env(), ready_timeout=0.5)
    with pytest.raises(StartError):
        service.start()
    assert service.record is not None and not session_members(service.record.pid)
    assert not service.pid_path.exists()


def test_ctrl_c_while_a_service_gets_ready_stops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self: Service) -> float:
        raise KeyboardInterrupt

    monkeypatch.setattr(Service, "wait_ready", interrupted)
    port = free_port()
    service = Service(name="interrupted", argv=[sys.executable, "-c", "import time; time.sleep(300)"], port=port,
                      url=f"http://127.0.0.1:{port}", workdir=tmp_path, process_env=base_env())
    try:
        with pytest.raises(KeyboardInterrupt):
            service.start()
        assert service.record is not None and not session_members(service.record.pid)
        assert not service.pid_path.exists()
    finally:
        service.stop(timeout=5)  # nothing left to stop, unless the start left it running


def test_processes_forked_while_stopping_are_stopped_too(tmp_path: Path) -> None:
    # Like a gunicorn master forking its worker just after we looked at the session.
    code = (
        "import signal, subprocess, time\n"
        "children = []\n"
        "signal.signal(signal.SIGTERM, lambda *_: children.append(subprocess.Popen(['sleep', '300'])))\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(1)\n"
    )
    popen, record = spawn_python(tmp_path, "forker", code)
    deadline = time.monotonic() + 10
    while "ready" not in (tmp_path / "logs" / "forker.log").read_text().splitlines():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    signalled = stop_record(record, timeout=1.0)
    popen.wait(timeout=5)
    assert record.pid in signalled and len(signalled) >= 2  # the leader and the child born meanwhile
    assert not session_members(record.pid)


def test_sweep_stops_only_daemons_whose_owner_died(tmp_path: Path) -> None:
    dead_owner = subprocess.Popen(["sleep", "0"])
    dead_info = proc_info(dead_owner.pid)
    dead_owner.wait()
    assert dead_info is not None
    me = proc_info(os.getpid())
    assert me is not None
    orphan_popen, orphan = spawn_python(tmp_path, "orphan", "import time; time.sleep(300)", owner=(dead_info.pid, dead_info.start_ticks))
    kept_popen, kept = spawn_python(tmp_path, "kept", "import time; time.sleep(300)", owner=(me.pid, me.start_ticks))
    try:
        assert sweep_orphans(sorted((tmp_path / "run").glob("*.pid"))) == ["orphan"]
        assert orphan_popen.wait(timeout=5) is not None
        assert kept_popen.poll() is None and (tmp_path / "run" / "kept.pid").exists()
    finally:
        stop_record(kept)
        kept_popen.wait(timeout=5)


def test_a_busy_port_fails_with_its_number(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortBusyError, match=f"port {port} busy"):
            start_fake_gcs(tmp_path, port=port)
    assert not (tmp_path / "run" / "gcs.pid").exists()


def test_a_function_that_cannot_start_fails_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(StartError, match=r"(?s)on_nothing exited before it was ready.*on_nothing"):
        start_function(tmp_path, target="on_nothing", source=RECORDING_FUNCTION, env={})


def test_a_killed_function_restarts_on_the_same_port(tmp_path: Path) -> None:
    env = {"RECORD_FILE": str(tmp_path / "record.jsonl")}
    service = start_function(tmp_path, target="on_followup", source=RECORDING_FUNCTION, env=env, name="followup")
    try:
        first_pid, port = service.pid, service.port
        service.kill()
        assert not service.running() and not port_is_open(port)
        service.start(port_wait=10)
        assert service.port == port and service.pid != first_pid and port_is_open(port)
        assert read_record(service.pid_path).pid == service.pid
    finally:
        service.stop()
    assert not port_is_open(port) and not session_members(service.pid)
