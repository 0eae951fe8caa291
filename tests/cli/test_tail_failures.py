"""``tail`` prints each import's failed files under its line (red on a terminal), and what is not listed."""

import io
import json
import re
from datetime import datetime, timezone
from types import SimpleNamespace

from handlers.cli.tail import render_table

RED = re.compile(r"\x1b\[[0-9;]*31m")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def message(**data):
    base = {"schema": "dicom-import-result/v1", "outcome": "PARTIAL", "rule": "all-dicom", "batch": "b-1",
            "store": "projects/p/locations/l/datasets/d/dicomStores/s", "operation": "projects/p/operations/7",
            "counter": {"success": 3, "failure": 2}, "error": {"code": 3, "message": "2 of 5 failed"}}
    return SimpleNamespace(data=json.dumps({**base, **data}).encode(), attributes={}, message_id="m-1",
                           publish_time=datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc))


FAILURES = [
    {"uri": "gs://inbox/site/empty.dcm", "generation": "11", "kind": "empty", "source": "logging",
     "error": {"code": 3, "message": "empty DICOM instance found"}},
    {"uri": "gs://inbox/site/re-sent.dcm", "generation": "12", "kind": "conflict", "source": "verified",
     "error": {"code": 6, "message": "checksum mismatch"}},
]


def test_failed_files_are_listed_under_their_batch_line():
    out = io.StringIO()
    render_table([message(failures=FAILURES, failuresListed=2)]).render(out)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("batch b-1  operation 7  error: 2 of 5 failed")
    assert lines[1:] == ["    failed  empty  gs://inbox/site/empty.dcm  generation 11  empty DICOM instance found",
                         "    failed  conflict  gs://inbox/site/re-sent.dcm  generation 12  checksum mismatch"]


def test_what_the_message_does_not_list_is_said():
    out = io.StringIO()
    render_table([message(failures=FAILURES[:1], failuresListed=150, failuresManifest="gs://state/failures/x.ndjson",
                          failuresIncomplete="2 of 152 failures not named: ...")]).render(out)
    assert out.getvalue().splitlines()[2:] == ["    ... and 149 more: gs://state/failures/x.ndjson",
                                               "    not all named: 2 of 152 failures not named: ..."]


def test_failed_files_are_red_on_a_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    out = Terminal()
    render_table([message(failures=FAILURES, failuresListed=2)]).render(out)
    rows = [line for line in out.getvalue().splitlines() if "site/empty.dcm" in line or "re-sent.dcm" in line]
    assert len(rows) == 2 and all(RED.search(row) for row in rows)
