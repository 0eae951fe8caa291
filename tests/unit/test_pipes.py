"""tests.pipes: a child that lives on but goes silent fails a test in time instead of hanging it."""

import subprocess
import sys
import time

from tests.pipes import PipeLines


def test_a_silent_child_gives_none_at_the_deadline_then_its_rest_once_it_ends():
    code = "import sys, time; print('first', flush=True); sys.stdout.write('partial'); sys.stdout.flush(); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", code], text=True, stdout=subprocess.PIPE)
    try:
        lines = PipeLines(process.stdout)
        assert lines.readline(timeout=30) == "first\n"
        started = time.monotonic()
        assert lines.readline(timeout=0.3) is None  # a partial line is not a line
        assert time.monotonic() - started < 5
    finally:
        process.kill()
        process.wait()
    assert lines.rest(timeout=5) == "partial"
    assert lines.readline(timeout=0) == ""
