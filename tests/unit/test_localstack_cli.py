"""``python -m localstack`` refusing what it cannot use in one line, before starting or calling anything."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from localstack import stack
from localstack.__main__ import main
from localstack.interrupts import STILL_STOPPING
from localstack.names import REPO_ROOT
from localstack.process import ProcessRecord, boot_id, proc_info


def run(workdir: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["--workdir", str(workdir), *argv])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("fault, words", [
    ("FOO", "--fault 'FOO': give HEALTHCARE_EMULATOR_FAULTS=JSON"),
    ("RATE=1", "--fault 'RATE=1': give HEALTHCARE_EMULATOR_FAULTS=JSON"),
    ("HEALTHCARE_EMULATOR_FAULTS=nope", "--fault HEALTHCARE_EMULATOR_FAULTS: not a fault configuration (Expecting"),
    ('HEALTHCARE_EMULATOR_FAULTS={"methods": {"*": {"rate429": 2}}}', "rate429 must be between 0 and 1"),
])
def test_up_refuses_a_fault_it_cannot_pass_on_before_starting_anything(tmp_path, capsys, monkeypatch, fault, words):
    monkeypatch.setattr(stack.Stack, "start", lambda self: pytest.fail("the stack was started"))
    code, err = run(tmp_path, capsys, "up", "--fault", fault)
    assert code == 2 and err.startswith("python -m localstack up: ") and words in err
    assert len(err.splitlines()) == 1 and not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [["events", "drop"], ["events", "deliver"], ["faults", "gcs", "show"]])
def test_a_stack_env_without_the_url_is_one_line(tmp_path, capsys, argv):
    (tmp_path / "stack.env").write_text("INBOX_BUCKET=dicom-inbox\n")
    code, err = run(tmp_path, capsys, *argv)
    assert code == 3 and len(err.splitlines()) == 1
    assert f"{tmp_path / 'stack.env'} does not set " in err and "make down && make up" in err


@pytest.mark.parametrize("text, words", [
    ('{"started": "2026-01-01T00:00:00Z", "services": [', "cannot read"),
    ('["bridge"]', "does not describe the services up started"),
    ('{"started": "2026-01-01T00:00:00Z", "services": [{"name": "bridge"}]}', "does not describe"),
])
def test_a_damaged_stack_json_is_one_line(tmp_path, capsys, text, words):
    (tmp_path / "stack.json").write_text(text)
    code, err = run(tmp_path, capsys, "status")
    assert code == 3 and len(err.splitlines()) == 1 and words in err and "make down && make up" in err


def test_down_with_a_stale_pid_file_names_no_unrelated_process(tmp_path, capsys):
    # The PID a stale pubsub.pid records now leads the session of an unrelated program (PID reuse).
    unrelated = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        info = proc_info(unrelated.pid)
        assert info is not None
        stale = ProcessRecord(name="pubsub", pid=unrelated.pid, start_ticks=info.start_ticks + 1,
                              cmdline=("java", "-jar", "pubsub-emulator.jar"), log=str(tmp_path / "logs" / "pubsub.log"),
                              boot_id=boot_id())
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "pubsub.pid").write_text(stale.to_json())
        code = main(["--workdir", str(tmp_path), "down"])
        captured = capsys.readouterr()
        assert (code, captured.err) == (0, "")
        assert captured.out == "pubsub was not running\nlocal stack down; no process left\n"
        assert unrelated.poll() is None and not (tmp_path / "run" / "pubsub.pid").exists()
    finally:
        unrelated.kill()
        unrelated.wait()


def test_up_interrupted_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    stopped = []

    def interrupted(self, *args):
        raise KeyboardInterrupt  # Ctrl-C while the services get ready

    monkeypatch.setattr(stack.Stack, "_start", interrupted)
    monkeypatch.setattr(stack.Stack, "stop", lambda self: stopped.append(self.workdir))
    try:
        code, err = run(tmp_path, capsys, "up")
    except KeyboardInterrupt:
        pytest.fail("up let the KeyboardInterrupt through (a traceback)")
    assert (code, err) == (130, "python -m localstack up: interrupted: stopped what had started\n")
    assert stopped == [tmp_path.resolve()]


def test_up_refuses_a_config_the_functions_cannot_load_before_starting_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(stack.Stack, "_start", lambda self, *args: pytest.fail("the stack was started"))
    monkeypatch.setattr(stack, "stop_workdir", lambda workdir: pytest.fail("a running stack was stopped"))
    config = tmp_path / "bad.yaml"
    # ${DICOM_STORE}, ${INBOX_BUCKET}... are the stack's own: only the misspelt key and ${NOT_SET} are problems.
    config.write_text("stores:\n  main: ${DICOM_STORE}\nrules:\n  - name: all\n    match: gs://${INBOX_BUCKET}/**\n"
                      "    store: main\n    storre: x\nstate:\n  bucket: ${NOT_SET}\nresults:\n  topic: ${RESULTS_TOPIC}\n"
                      "followup:\n  topic: ${FOLLOWUP_TOPIC}\n")
    workdir = tmp_path / "work"
    code = main(["--workdir", str(workdir), "up", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and not workdir.exists()
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"python -m localstack up: {config}:") for line in lines)
    assert "storre" in err and "${NOT_SET}" in err and "DICOM_STORE" not in err and "INBOX_BUCKET" not in err


def ctrl_c_then_finish(stopped: list[str], name: str) -> None:
    """A stop taking a while; during pubsub's the user presses Ctrl-C (SIGINT to this process, as a terminal sends).

    Once only: two SIGINTs sent at once may arrive as one.
    """
    if name == "pubsub":
        os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)  # the main thread handles the signal meanwhile
    stopped.append(name)


class SlowService:
    def __init__(self, name: str, stopped: list[str]) -> None:
        self.name, self.stopped = name, stopped

    def stop(self) -> None:
        ctrl_c_then_finish(self.stopped, self.name)


def test_ctrl_c_again_while_up_stops_what_had_started_is_one_line_and_the_stop_finishes(tmp_path, capsys, monkeypatch):
    stopped: list[str] = []

    def interrupted(self, *args):
        self.services = {name: SlowService(name, stopped) for name in ("pubsub", "gcs")}
        (self.workdir / "run").mkdir()
        (self.workdir / "run" / "bridge.pid").write_text("{")  # stop_workdir, after the services, removes it
        raise KeyboardInterrupt  # the first Ctrl-C, while the services get ready

    monkeypatch.setattr(stack.Stack, "_start", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    try:
        code, err = run(tmp_path, capsys, "up")
    except KeyboardInterrupt:
        pytest.fail("the second Ctrl-C cut the stop short (a traceback)")
    assert (code, err) == (130, f"{STILL_STOPPING}\npython -m localstack up: interrupted: stopped what had started\n")
    assert sorted(stopped) == ["gcs", "pubsub"] and not (tmp_path / "run" / "bridge.pid").exists()
    assert signal.getsignal(signal.SIGINT) is handler


def pid_files_of_gone_processes(workdir: Path) -> None:
    (workdir / "run").mkdir(parents=True)
    for name in ("pubsub", "gcs"):
        record = ProcessRecord(name=name, pid=2**22 + 1, start_ticks=1, cmdline=(name,), log="", boot_id=boot_id())
        (workdir / "run" / f"{name}.pid").write_text(record.to_json())  # a PID above Linux's maximum: no process


def test_ctrl_c_during_down_lets_it_finish_then_exits_130(tmp_path, capsys, monkeypatch):
    stopped: list[str] = []
    pid_files_of_gone_processes(tmp_path)
    (tmp_path / "stack.env").write_text("INBOX_BUCKET=dicom-inbox\n")
    monkeypatch.setattr(stack, "stop_record", lambda record, timeout: ctrl_c_then_finish(stopped, record.name) or [7])
    try:
        code = main(["--workdir", str(tmp_path), "down"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C cut down short (a traceback)")
    captured = capsys.readouterr()
    assert (code, sorted(stopped)) == (130, ["gcs", "pubsub"])
    assert captured.err == f"{STILL_STOPPING}\npython -m localstack down: interrupted\n"
    assert captured.out.endswith("local stack down; no process left\n")
    assert not list((tmp_path / "run").iterdir()) and not (tmp_path / "stack.env").exists()


def test_ctrl_c_while_up_stops_the_previous_stack_starts_nothing(tmp_path, capsys, monkeypatch):
    stopped: list[str] = []
    pid_files_of_gone_processes(tmp_path)
    monkeypatch.setattr(stack, "stop_record", lambda record, timeout: ctrl_c_then_finish(stopped, record.name) or [7])
    monkeypatch.setattr(stack.Stack, "_start", lambda self, *args: pytest.fail("the stack was started"))
    code, err = run(tmp_path, capsys, "up")
    assert (code, sorted(stopped)) == (130, ["gcs", "pubsub"]) and not list((tmp_path / "run").iterdir())
    assert err == f"{STILL_STOPPING}\npython -m localstack up: interrupted: stopped what had started\n"


def test_up_checks_the_config_with_the_addresses_the_functions_will_have(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(stack.Stack, "_start", lambda self, *args: pytest.fail("the stack was started"))
    monkeypatch.setattr(stack, "stop_workdir", lambda workdir: pytest.fail("a running stack was stopped"))
    monkeypatch.setattr(stack.Ports, "pick", classmethod(lambda cls, functions: cls(*range(41001, 41009),
                                                                                   functions=(41009, 41010, 41011))))
    config = tmp_path / "emulator-url.yaml"  # the Healthcare emulator's URL where the store's name belongs
    config.write_text("stores:\n  main: ${HEALTHCARE_EMULATOR_HOST}/v1/${DICOM_STORE}\nrules:\n  - name: all\n"
                      "    match: gs://${INBOX_BUCKET}/**\n    store: main\nstate:\n  bucket: ${STATE_BUCKET}\n"
                      "results:\n  topic: ${RESULTS_TOPIC}\nfollowup:\n  topic: ${FOLLOWUP_TOPIC}\n")
    code = main(["--workdir", str(tmp_path / "work"), "up", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "store 'main' is 'http://127.0.0.1:41004/v1/projects/local-project/" in err and "127.0.0.1:0" not in err


def test_up_picks_its_ports_again_when_one_is_taken_while_the_previous_stack_stops(tmp_path, monkeypatch):
    import socket

    held = []

    def previous_stack_stops(workdir):  # meanwhile another program takes one of the ports picked
        sock = socket.socket()
        sock.bind(("127.0.0.1", first.gcs))
        sock.listen()
        held.append(sock)

    first = stack.Ports.pick(3)
    picks = iter([first, stack.Ports.pick(3)])
    monkeypatch.setattr(stack.Ports, "pick", classmethod(lambda cls, functions: next(picks)))
    monkeypatch.setattr(stack, "stop_workdir", previous_stack_stops)
    started = []
    monkeypatch.setattr(stack.Stack, "_start", lambda self, started_at, ports, env: started.append((ports, env)))
    try:
        stack.Stack(tmp_path / "work").start()
    finally:
        for sock in held:
            sock.close()
    [(ports, env)] = started
    assert ports is not first  # the second pick, and the environment (checked config) built on it
    assert env["HEALTHCARE_EMULATOR_HOST"].endswith(f":{ports.healthcare}")


def test_ctrl_c_during_a_stop_with_stderr_gone_still_lets_the_stop_finish(monkeypatch):
    """`make demo 2>&1 | tee log`: the Ctrl-C also ends tee, so the one line cannot be written; the stop goes on."""
    from localstack import interrupts

    class GoneStderr:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    finished = []

    @interrupts.uninterrupted
    def stop() -> None:
        monkeypatch.setattr(sys, "stderr", GoneStderr())
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, between two bytecodes
        finished.append(True)

    with pytest.raises(KeyboardInterrupt):
        stop()
    assert finished == [True]


def _run_into_a_closed_pipe(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """``python -m localstack ARGV | head -0``: stdout is a pipe whose reader is already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "localstack", *argv], stdout=write_end, stderr=subprocess.PIPE,
                              cwd=REPO_ROOT, timeout=60, check=False)
    finally:
        os.close(write_end)


def test_env_into_a_closed_pipe_stops_quietly(tmp_path):
    (tmp_path / "stack.env").write_text("".join(f"KEY{n}=value{n}\n" for n in range(50)))
    result = _run_into_a_closed_pipe("--workdir", str(tmp_path), "env")
    assert (result.returncode, result.stderr.decode()) == (141, "")


def test_faults_show_into_a_closed_pipe_does_not_blame_the_proxy(tmp_path):
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            body = b'{"methods": {}}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "stack.env").write_text(f"STORAGE_EMULATOR_HOST=http://127.0.0.1:{server.server_port}\n")
        result = _run_into_a_closed_pipe("--workdir", str(tmp_path), "faults", "gcs", "show")
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode, result.stderr.decode()) == (141, "")
