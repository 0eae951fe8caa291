"""``python -m localstack up|status|env|down`` as ``make`` runs it: twice, after a crash, and nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from localstack.names import CONTRACT_KEYS, REPO_ROOT
from localstack.process import ProcessRecord, alive, read_record, session_members
from localstack.stack import read_env_file

pytestmark = pytest.mark.stack

RECORDING_FUNCTION = Path(__file__).with_name("recording_function.py")


def cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localstack", "--workdir", str(workdir), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def records(workdir: Path) -> dict[str, ProcessRecord]:
    return {path.stem: record for path in (workdir / "run").glob("*.pid") if (record := read_record(path))}


def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    workdir = tmp_path / "local"
    try:
        yield workdir
    finally:
        cli(workdir, "down")


def test_up_twice_after_a_crash_then_down_leaves_no_process(workdir: Path) -> None:
    seen: list[ProcessRecord] = []

    up = cli(workdir, "up", "--source", str(RECORDING_FUNCTION))
    assert up.returncode == 0, up.stderr
    assert "local stack up in" in up.stdout
    env = read_env_file(workdir / "stack.env")
    assert set(CONTRACT_KEYS) <= set(env)
    first = records(workdir)
    assert set(first) == {"pubsub", "gcs", "gcs-proxy", "healthcare", "function", "followup", "export", "bridge",
                          "gateway"}
    seen += first.values()
    assert cli(workdir, "status").returncode == 0

    again = cli(workdir, "up", "--source", str(RECORDING_FUNCTION))  # stops the first stack, then starts anew
    assert again.returncode == 0, again.stderr
    second = records(workdir)
    seen += second.values()
    assert all(not session_members(record.pid) for record in first.values())
    assert {record.pid for record in second.values()}.isdisjoint(record.pid for record in first.values())

    # A crash: kill -9 of the Pub/Sub emulator and of the function's gunicorn master (its
    # worker, which shares the listening socket, outlives it for a moment).
    os.kill(second["pubsub"].pid, signal.SIGKILL)
    os.kill(second["function"].pid, signal.SIGKILL)
    wait_gone([second["pubsub"].pid, second["function"].pid])
    status = cli(workdir, "status")
    assert status.returncode == 1
    assert [line.split()[0] for line in status.stdout.splitlines() if " DOWN " in line] == ["pubsub", "function"]

    after_crash = cli(workdir, "up", "--source", str(RECORDING_FUNCTION))
    assert after_crash.returncode == 0, after_crash.stderr
    assert all(not session_members(record.pid) for record in second.values())
    seen += records(workdir).values()
    env_line = cli(workdir, "env")
    assert env_line.returncode == 0 and "export DICOM_STORE=" in env_line.stdout

    down = cli(workdir, "down")
    assert down.returncode == 0, down.stderr
    assert "no process left" in down.stdout
    assert all(not session_members(record.pid) for record in seen)
    assert not (workdir / "stack.env").exists() and not list((workdir / "run").glob("*.pid"))
    assert cli(workdir, "status").returncode == 3
    assert cli(workdir, "down").returncode == 0  # idempotent


def test_up_fails_clearly_and_leaves_nothing_when_a_function_cannot_start(workdir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('broken on purpose')\n")
    up = cli(workdir, "up", "--source", str(broken))
    assert up.returncode == 1
    assert "localstack up failed" in up.stderr and "broken on purpose" in up.stderr
    assert not list((workdir / "run").glob("*.pid"))
    assert not (workdir / "stack.env").exists()
