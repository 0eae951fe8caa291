"""``python -m localstack.demo`` failing or interrupted: one line naming the fix, never a traceback."""

from __future__ import annotations

import pytest

from handlers import config
from localstack import demo, stack
from localstack.process import StartError

JAVA_MISSING = "java not found: install OpenJDK 17 (apt-get install -y openjdk-17-jre-headless)"


def test_a_stack_that_cannot_start_is_one_line_naming_the_fix(tmp_path, capsys, monkeypatch):
    def missing_java(self):
        raise StartError(JAVA_MISSING)

    monkeypatch.setattr(stack.Stack, "start", missing_java)
    code = demo.main(["--workdir", str(tmp_path)])
    assert (code, capsys.readouterr().err) == (1, f"python -m localstack.demo failed: {JAVA_MISSING}\n")


def test_ctrl_c_during_the_demo_stops_the_stack_and_is_one_line(tmp_path, capsys, monkeypatch):
    stopped = []

    def interrupted(*args):
        raise KeyboardInterrupt  # Ctrl-C while the demo works on the started stack

    monkeypatch.setattr(stack.Stack, "start", lambda self: {"DICOM_IMPORT_CONFIG": "config.yaml"})
    monkeypatch.setattr(stack.Stack, "stop", lambda self: stopped.append(self.workdir))
    monkeypatch.setattr(config, "load", interrupted)
    try:
        code = demo.main(["--workdir", str(tmp_path)])
    except KeyboardInterrupt:
        pytest.fail("the demo let the KeyboardInterrupt through (a traceback)")
    assert (code, capsys.readouterr().err) == (130, "python -m localstack.demo: interrupted\n")
    assert stopped == [tmp_path]


def test_an_error_after_the_stack_is_up_is_one_line_and_the_traceback_is_kept(tmp_path, capsys, monkeypatch):
    stopped = []

    def service_gone(*args):
        raise ConnectionError("the Pub/Sub emulator stopped answering")

    monkeypatch.setattr(stack.Stack, "start", lambda self: {"DICOM_IMPORT_CONFIG": "config.yaml"})
    monkeypatch.setattr(stack.Stack, "stop", lambda self: stopped.append(self.workdir))
    monkeypatch.setattr(config, "load", service_gone)
    code = demo.main(["--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("python -m localstack.demo failed: ConnectionError: the Pub/Sub emulator stopped answering")
    assert "service_gone" in (tmp_path / "demo-error.log").read_text() and stopped == [tmp_path]
