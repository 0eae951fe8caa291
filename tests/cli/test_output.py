"""Terminal output: the progress bar, red failures, and tail's one line per result message."""

import io
import json
from datetime import datetime, timezone
from types import SimpleNamespace

from handlers.cli.context import Context
from handlers.cli.tail import render_json, render_line
from handlers.cli.terminal import RED, RESET, Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_one_line_on_a_terminal():
    stream = Terminal()
    progress = Progress(stream, "admitted", 4)
    for _ in range(4):
        progress.advance()
    progress.finish("done")
    text = stream.getvalue()
    assert text.count("\r") == 5 and text.count("\n") == 1
    assert "\radmitted [" + "#" * 15 + "." * 15 + "] 2/4" in text
    assert text.endswith("\radmitted [" + "#" * 30 + "] 4/4 done\n")


def test_progress_prints_plain_lines_every_tenth_otherwise():
    stream = io.StringIO()
    progress = Progress(stream, "admitted", 100)
    for _ in range(100):
        progress.advance()
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines == [f"admitted: {n}/100" for n in range(10, 100, 10)] + ["admitted: 100/100"]


def message(data, **attributes):
    return SimpleNamespace(data=json.dumps(data).encode(), attributes=attributes, message_id="m-1",
                           publish_time=datetime(2026, 11, 25, 10, 0, 1, tzinfo=timezone.utc))


IMPORT = {"schema": "dicom-import-result/v1", "outcome": "SUCCEEDED", "rule": "all-dicom",
          "store": "projects/p/locations/l/datasets/d/dicomStores/s", "batch": "b-1",
          "operation": "projects/p/locations/l/datasets/d/operations/42", "counter": {"success": 3, "failure": 0},
          "error": None}


def context(stream):
    return Context("c.yaml", stream, io.StringIO())


def test_an_import_result_is_one_readable_line():
    line = render_line(message(IMPORT), context(Terminal()))
    assert line == ("2026-11-25T10:00:01Z  import  SUCCEEDED  3 ok 0 failed  rule all-dicom  store d/dicomStores/s  "
                    "batch b-1  operation 42")


def test_failures_are_red_on_a_terminal_only_with_their_error():
    failed = {**IMPORT, "outcome": "PARTIAL", "counter": {"success": 2, "failure": 1},
              "error": {"code": 2, "message": "1 file failed"}}
    red = render_line(message(failed), context(Terminal()))
    assert red.startswith(RED) and red.endswith(RESET) and "PARTIAL" in red and "error: 1 file failed" in red
    plain = render_line(message(failed), context(io.StringIO()))
    assert RED not in plain and plain.endswith("operation 42  error: 1 file failed")


def test_an_export_result_names_its_request():
    export = {"schema": "dicom-export-result/v1", "outcome": "REJECTED", "requestId": "req-9", "store": None,
              "operation": None, "counter": {"success": 0, "failure": 0}, "error": {"message": "bad UID"}}
    line = render_line(message(export), context(io.StringIO()))
    assert line == "2026-11-25T10:00:01Z  export  REJECTED   0 ok 0 failed  store -  request req-9  operation -  " \
                   "error: bad UID"


def test_other_messages_are_shown_as_such_and_json_keeps_everything():
    assert "not a DICOM result" in render_line(SimpleNamespace(data=b"hello", attributes={}, message_id="m-2",
                                                               publish_time=None), context(io.StringIO()))
    assert json.loads(render_json(message(IMPORT, outcome="SUCCEEDED"))) == {
        "messageId": "m-1", "publishTime": "2026-11-25T10:00:01Z", "attributes": {"outcome": "SUCCEEDED"},
        "data": IMPORT}
