"""The emulator's Logging query parser: the subset the function uses, and a 400 for anything else."""

import pytest

from emulator.logfilter import FilterError, parse

ENTRY = {
    "logName": "projects/p/logs/healthcare.googleapis.com%2Fimport_dicom",
    "severity": "ERROR",
    "timestamp": "2026-01-01T10:00:00.500000Z",
    "operation": {"id": "projects/p/locations/l/datasets/d/operations/123"},
    "resource": {"type": "healthcare_dicom_store", "labels": {"dicom_store_id": "s"}},
    "jsonPayload": {"@type": "type.googleapis.com/google.cloud.healthcare.logging.ImportDicomLogEntry",
                    "source": "gs://b/x.dcm", "error": {"code": 3}},
}
TYPE = "type.googleapis.com/google.cloud.healthcare.logging.ImportDicomLogEntry"


@pytest.mark.parametrize("query, matches", [
    ("", True),
    ('jsonPayload."@type"="' + TYPE + '"', True),
    ("jsonPayload.@type=\"" + TYPE + "\"", True),
    ('resource.type="healthcare_dicom_store" AND resource.labels.dicom_store_id=s', True),
    ('operation.id="123" OR operation.id="projects/p/locations/l/datasets/d/operations/123"', True),
    ('(operation.id="123" OR operation.id="9") AND severity=ERROR', False),
    ('severity>=WARNING timestamp>="2026-01-01T09:59:00Z"', True),
    ('timestamp>"2026-01-01T10:00:00.5Z"', False),
    ('timestamp="2026-01-01T10:00:00.5Z"', True),
    ("severity<ERROR", False),
    ("NOT severity=ERROR", False),
    ("-severity=ERROR", False),
    ('jsonPayload.source:"X.DCM"', True),
    ("jsonPayload.error.code=3", True),
    ("jsonPayload.error.code>2", True),
    ('jsonPayload.missing="a"', False),
    ('jsonPayload.missing!="a"', True),
    ('logName="projects/p/logs/healthcare.googleapis.com%2Fexport_dicom"', False),
    ('resource.type="HEALTHCARE_DICOM_STORE"', True),
    ('jsonPayload.source!="GS://B/X.DCM"', False),
    ('timestamp>="2026-01-01"', True),
    ('timestamp<"2026-01-01T10:00:00"', False),
    ('timestamp<"2026-01-01T10:00:01"', True),
    # ":" on an object or a list searches the values nested in it (jsonPayload:"text", as the Logging docs show)
    ('jsonPayload:"X.DCM"', True),
    ("jsonPayload:ImportDicomLogEntry", True),
    ("jsonPayload.error:3", True),
    ('jsonPayload:"nowhere"', False),
    ('resource:"healthcare_dicom"', True),
    # ":*" is a presence test, not a search for "*"; a quoted "*" is text
    ("jsonPayload.error:*", True),
    ("jsonPayload.missing:*", False),
    ("NOT jsonPayload.missing:*", True),
    ("severity:* AND timestamp:*", True),
    ('jsonPayload.source:"*"', False),
])
def test_comparisons_and_boolean_operators(query, matches):
    assert parse(query)(ENTRY) is matches


# The Logging docs' example: "a" OR NOT "b" AND NOT "c" OR "d" is ("a" OR (NOT "b")) AND ((NOT "c") OR "d"),
# with a, c true and b, d false here: False, where AND binding tighter than OR would give True.
A, B, C, D = "jsonPayload.error.code=3", 'jsonPayload.source:"y"', "severity=ERROR", "logName:export_dicom"


def test_not_binds_tightest_then_or_then_and_as_the_logging_docs_say():
    assert parse(f"{A} OR NOT {B} AND NOT {C} OR {D}")(ENTRY) is False
    assert parse(f"({A} OR (NOT {B})) AND ((NOT {C}) OR {D})")(ENTRY) is False
    assert parse(f"{A} OR (NOT {B} AND NOT {C}) OR {D}")(ENTRY) is True
    assert parse(f"NOT {C} OR {A} {D} OR {A}")(ENTRY) is True, "juxtaposition is AND, below OR"


@pytest.mark.parametrize("query, fragment", [
    ('"text alone"', "global restrictions"),
    ("severity", "global restrictions"),
    ("(severity=ERROR", "the filter ends"),
    ("severity=ERROR)", "unexpected ')' at character 15"),
    ("severity=ERROR OR", "the filter ends"),
    ('severity=~"E"', "regular expressions"),
    ('timestamp>="yesterday"', "not an RFC 3339 time"),
    ('timestamp="yesterday"', "not an RFC 3339 time"),
    ("severity>=LOUD", "not a severity"),
    ('SEARCH("x")', "not supported"),
    ("a.b$c=1", "is not a field name"),
    ("a.=1", "expected a field name"),
])
def test_what_it_cannot_read_is_an_error_never_match_everything(query, fragment):
    with pytest.raises(FilterError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        parse(query)
