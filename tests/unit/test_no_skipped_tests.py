"""CI runs every test: with NO_SKIPPED_TESTS=1 (set by .ci/run) a skipped test fails the session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_pytest(test_file: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "NO_SKIPPED_TESTS"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           str(test_file)], cwd=REPO, env={**environment, **env}, capture_output=True, text=True,
                          timeout=120)


def test_a_skipped_test_fails_the_session_in_ci_and_only_there(tmp_path: Path) -> None:
    test_file = tmp_path / "test_left_out.py"
    test_file.write_text("import pytest\n\n\ndef test_left_out():\n    pytest.skip('no tool here')\n")
    in_ci = run_pytest(test_file, NO_SKIPPED_TESTS="1")
    assert in_ci.returncode == 1 and "1 failed" in in_ci.stdout
    assert "skipped" in in_ci.stdout and "no tool here" in in_ci.stdout
    elsewhere = run_pytest(test_file)
    assert elsewhere.returncode == 0 and "1 skipped" in elsewhere.stdout


def test_a_module_skipped_whole_fails_the_session_in_ci(tmp_path: Path) -> None:
    test_file = tmp_path / "test_module_left_out.py"
    test_file.write_text("import pytest\n\npytest.importorskip('no_such_module_here')\n\n\ndef test_x():\n    pass\n")
    in_ci = run_pytest(test_file, NO_SKIPPED_TESTS="1")
    assert in_ci.returncode != 0 and "no_such_module_here" in in_ci.stdout
    elsewhere = run_pytest(test_file)
    assert elsewhere.returncode == 5 and "1 skipped" in elsewhere.stdout  # 5: no test ran


def test_ci_runs_the_tests_with_skips_forbidden() -> None:
    assert "NO_SKIPPED_TESTS=1 make test" in (REPO / ".ci" / "run").read_text()
