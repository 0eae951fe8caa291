"""Terminal output (handlers/cli/terminal.py, on rich): progress, tables, colour; plain text when not a terminal."""

import io
import json
import re
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from handlers import log
from handlers.cli.backfill import render_summary, render_totals
from handlers.cli.backfill_run import EARLIER, NEW, Tally
from handlers.cli.tail import render_json, render_line, render_table
from handlers.cli.terminal import Column, Progress, Table, failure

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
RED = re.compile(r"\x1b\[[0-9;]*31m")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def wide_colour_terminal(monkeypatch):
    """What a terminal's environment says (colour on, 200 columns), whatever the test runner's is."""
    for key in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "200")


def plain(text: str) -> str:
    return ANSI.sub("", text)


def test_progress_on_a_terminal_shows_count_rate_and_time_left_and_keeps_log_lines_whole():
    stream = Terminal()
    sink = io.StringIO()
    previous = log.redirect(sink)
    try:
        with Progress(stream, "admitted", 4) as progress:
            for number in range(4):
                progress.advance()
                log.info("object admitted", number=number, padding="x" * 300)
            progress.finish("done")
        after = log.redirect(previous)
    finally:
        log.redirect(previous)
    text = stream.getvalue()
    assert "\r" in text, "the bar is redrawn in place"
    final = plain(text).replace("\r", "\n").splitlines()
    bars = [line for line in final if line.startswith("admitted ")]
    assert re.fullmatch(r"admitted \S+ 4/4 [0-9.]+/s 0:00:0\d left 0:00:00 done", bars[-1].rstrip()), bars[-1]
    logged = [json.loads(line) for line in final if line.startswith("{")]
    assert [entry["number"] for entry in logged] == [0, 1, 2, 3], "log lines print above the bar, one line each"
    assert after is sink and sink.getvalue() == "", "log lines went above the bar, then back where they were"


def test_progress_stops_drawing_when_the_block_raises():
    stream = Terminal()
    with pytest.raises(KeyboardInterrupt):
        with Progress(stream, "admitted", 10) as progress:
            progress.advance()
            raise KeyboardInterrupt
    assert stream.getvalue().endswith("\x1b[?25h"), "the cursor is shown again"
    before = stream.getvalue()
    progress.advance()
    assert stream.getvalue() == before


def test_progress_prints_plain_lines_every_tenth_otherwise():
    stream = io.StringIO()
    with Progress(stream, "admitted", 100) as progress:
        for _ in range(100):
            progress.advance()
        progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines == [f"admitted: {n}/100" for n in range(10, 100, 10)] + ["admitted: 100/100"]


def test_an_open_ended_progress_prints_each_step_and_ends_full_on_a_terminal():
    stream = io.StringIO()
    with Progress(stream, "studies found", None) as progress:
        progress.advance(5000)
        progress.advance(12)
        progress.finish("(3 pages)")
    assert stream.getvalue() == "studies found: 5000\nstudies found: 5012\nstudies found: 5012 (3 pages)\n"
    terminal = Terminal()
    with Progress(terminal, "studies found", None) as progress:
        progress.advance(7)
        progress.finish("(2 pages)")
    last = plain(terminal.getvalue()).replace("\r", "\n").splitlines()[-1]
    assert re.fullmatch(r"studies found \S+ 7/7 ([0-9.]+|-)/s 0:00:0\d left 0:00:00 \(2 pages\)", last.rstrip()), last


def test_failures_are_red_on_a_terminal_unless_no_color(monkeypatch):
    assert RED.search(failure("export FAILED", Terminal())) and plain(failure("export FAILED", Terminal())) == "export FAILED"
    assert failure("export FAILED", io.StringIO()) == "export FAILED"
    monkeypatch.setenv("NO_COLOR", "1")
    assert not RED.search(failure("export FAILED", Terminal()))


def test_a_table_on_a_terminal_has_a_header_and_red_failed_rows_and_plain_lines_otherwise():
    table = Table([Column("rule"), Column("ok", "right")], title="results:")
    table.add(["ct", 12], plain="  ct  12 ok")
    table.add(["mr", 3], plain="  mr  3 ok", failed=True)
    table.add(["cr", 0])
    stream = Terminal()
    table.render(stream)
    lines = [line.rstrip() for line in plain(stream.getvalue()).splitlines()]
    assert lines[0] == "results:" and lines[1].split() == ["rule", "ok"] and set(lines[2]) <= {"─", " "}
    assert [line.split() for line in lines[3:]] == [["ct", "12"], ["mr", "3"], ["cr", "0"]]
    assert lines[3].index("12") < lines[4].index("3"), "numbers are right-aligned"
    red = [line for line in stream.getvalue().splitlines() if RED.search(line)]
    assert len(red) == 1 and "mr" in plain(red[0])
    piped = io.StringIO()
    table.render(piped)
    assert piped.getvalue() == "results:\n  ct  12 ok\n  mr  3 ok\ncr  0\n"
    with pytest.raises(ValueError):
        table.add(["one cell"])


def message(data, **attributes):
    return SimpleNamespace(data=json.dumps(data).encode(), attributes=attributes, message_id="m-1",
                           publish_time=datetime(2026, 11, 25, 10, 0, 1, tzinfo=timezone.utc))


IMPORT = {"schema": "dicom-import-result/v1", "outcome": "SUCCEEDED", "rule": "all-dicom",
          "store": "projects/p/locations/l/datasets/d/dicomStores/s", "batch": "b-1",
          "operation": "projects/p/locations/l/datasets/d/operations/42", "counter": {"success": 3, "failure": 0},
          "error": None}


def test_an_import_result_is_one_readable_line():
    line = render_line(message(IMPORT))
    assert line == ("2026-11-25T10:00:01Z  import  SUCCEEDED  3 ok 0 failed  rule all-dicom  store d/dicomStores/s  "
                    "batch b-1  operation 42")


FAILED = {**IMPORT, "outcome": "PARTIAL", "counter": {"success": 2, "failure": 1},
          "error": {"code": 2, "message": "1 file failed"}}


def test_tail_prints_plain_lines_with_the_error_when_not_a_terminal():
    stream = io.StringIO()
    render_table([message(IMPORT), message(FAILED)]).render(stream)
    assert stream.getvalue().splitlines() == [render_line(message(IMPORT)), render_line(message(FAILED))]
    assert stream.getvalue().splitlines()[1].endswith("operation 42  error: 1 file failed")


def test_tail_on_a_terminal_is_a_table_with_failures_in_red_and_one_header():
    stream = Terminal()
    render_table([message(IMPORT), message(FAILED)]).render(stream)
    render_table([message(IMPORT)]).render(stream, header=False)
    lines = plain(stream.getvalue()).splitlines()
    assert lines[0].split()[:5] == ["published", "kind", "outcome", "ok", "failed"]
    rows = [line for line in lines if line.startswith("2026")]
    assert [row.split()[2:5] for row in rows] == [["SUCCEEDED", "3", "0"], ["PARTIAL", "2", "1"], ["SUCCEEDED", "3", "0"]]
    assert rows[0].index("SUCCEEDED") == rows[2].index("SUCCEEDED"), "later pulls align under the header"
    assert sum("published" in line for line in lines) == 1
    red = [plain(line) for line in stream.getvalue().splitlines() if RED.search(line)]
    assert len(red) == 1 and "PARTIAL" in red[0] and "1 file failed" in red[0]


def test_an_export_result_names_its_request():
    export = {"schema": "dicom-export-result/v1", "outcome": "REJECTED", "requestId": "req-9", "store": None,
              "operation": None, "counter": {"success": 0, "failure": 0}, "error": {"message": "bad UID"}}
    line = render_line(message(export))
    assert line == "2026-11-25T10:00:01Z  export  REJECTED   0 ok 0 failed  store -  request req-9  operation -  " \
                   "error: bad UID"


def test_backfill_results_are_a_table_on_a_terminal_and_lines_otherwise():
    tally = Tally(batches={("ct", "b-1"): NEW, ("ct", "b-2"): EARLIER, ("ct", "b-3"): NEW})
    results = {("ct", "b-1"): {"result": {"outcome": "SUCCEEDED", "counter": {"success": 4, "failure": 0},
                                          "objectCount": 4, "operation": "op-1"}},
               ("ct", "b-2"): {"result": {"outcome": "PARTIAL", "counter": {"success": 1, "failure": 1},
                                          "objectCount": 2, "operation": "op-2"}}}
    piped = io.StringIO()
    render_summary(tally, results).render(piped)
    assert piped.getvalue().splitlines() == [
        "results (one import call per batch):",
        "  ct  b-1  SUCCEEDED  4 ok, 0 failed, 4 objects  operation op-1",
        "  ct  b-2  PARTIAL  1 ok, 1 failed, 2 objects  operation op-2  (imported before this run)",
        "  ct  b-3  still running"]
    assert render_totals(tally, results).splitlines()[0] == (
        "total: 2 import calls by this run (1 batch from before); instances in these batches: 5 imported, 1 failed; "
        "0 objects already covered before this run")
    assert render_totals(tally, results).splitlines()[1] == (
        "failed files and why: `python -m handlers failures --rule ct` "
        "(then `python -m handlers retry --rule ct` once the cause is fixed)")
    stream = Terminal()
    render_summary(tally, results).render(stream)
    lines = plain(stream.getvalue()).splitlines()
    assert lines[1].split() == ["rule", "batch", "outcome", "ok", "failed", "objects", "operation", "note"]
    assert lines[4].split()[:7] == ["ct", "b-2", "PARTIAL", "1", "1", "2", "op-2"]
    red = [plain(line) for line in stream.getvalue().splitlines() if RED.search(line)]
    assert len(red) == 1 and "b-2" in red[0]


def test_other_messages_are_shown_as_such_and_json_keeps_everything():
    assert "not a DICOM result" in render_line(SimpleNamespace(data=b"hello", attributes={}, message_id="m-2",
                                                               publish_time=None))
    assert json.loads(render_json(message(IMPORT, outcome="SUCCEEDED"))) == {
        "messageId": "m-1", "publishTime": "2026-11-25T10:00:01Z", "attributes": {"outcome": "SUCCEEDED"},
        "data": IMPORT}


RECONCILE = {"schema": "dicom-reconcile-result/v1", "outcome": "RECOVERED", "sweep": "20261125T100000Z-0a1b2c3d",
             "window": {"from": "2026-11-25T08:50:00.000Z", "to": "2026-11-25T09:58:00.000Z"},
             "rules": [{"rule": "ct", "source": "gs://inbox/ct/", "listed": 9, "inWindow": 7, "matched": 6,
                        "covered": 4, "coveredByBackfill": 0, "admitted": 2, "batches": ["b-7"]}],
             "totals": {"listed": 9, "inWindow": 7, "matched": 6, "covered": 4, "coveredByBackfill": 0,
                        "admitted": 2}}


def test_a_reconcile_result_in_tail_says_what_the_sweep_admitted():
    line = render_line(message(RECONCILE))
    assert line == ("2026-11-25T10:00:01Z  reconcile  RECOVERED  2 admitted of 6 matched (4 covered)  "
                    "sweep 20261125T100000Z-0a1b2c3d")
    stream = Terminal()
    render_table([message(RECONCILE)]).render(stream)
    red = [plain(row) for row in stream.getvalue().splitlines() if RED.search(row)]
    assert len(red) == 1 and "RECOVERED" in red[0], "lost events need attention"


def test_the_reconcile_command_prints_a_line_per_rule_and_what_recovered_means():
    from handlers.cli.reconcile import render

    table, summary = render(RECONCILE)
    stream = io.StringIO()
    table.render(stream)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "sweep 20261125T100000Z-0a1b2c3d: objects created 2026-11-25T08:50:00.000Z .. 2026-11-25T09:58:00.000Z"
    assert lines[1] == ("  ct  gs://inbox/ct/: listed 9, in window 7, matched 6, covered 4, by backfill 0, "
                        "admitted 2")
    assert summary.startswith("RECOVERED: 2 objects no event had announced, admitted into 1 batch: b-7\n")
    quiet = {**RECONCILE, "outcome": "SUCCEEDED", "totals": {**RECONCILE["totals"], "admitted": 0}}
    assert render(quiet)[1] == "SUCCEEDED: every matched object in the window was already covered\n"


def test_the_reconcile_command_says_when_the_checkpoint_did_not_move_as_usual():
    from handlers.cli.reconcile import render

    quiet = {**RECONCILE, "outcome": "SUCCEEDED", "totals": {**RECONCILE["totals"], "admitted": 0}}
    kept = render({**quiet, "checkpoint": {"moved": False}})[1].splitlines()
    assert kept[1].startswith("checkpoint not moved: the window starts after the checkpoint minus the overlap")
    assert "run reconcile without --since" in kept[1]
    unswept = {"from": "2026-10-01T00:00:00.000Z", "to": "2026-10-27T10:00:00.000Z"}
    capped = render({**quiet, "checkpoint": {"moved": True, "unswept": unswept}})[1].splitlines()
    assert capped[1].startswith("NOT SWEPT: objects created 2026-10-01T00:00:00.000Z .. 2026-10-27T10:00:00.000Z "
                                "(the checkpoint moved past them): the window never looks back further than 29 days")
    assert "python -m handlers backfill gs://BUCKET/PREFIX" in capped[1]
