"""The subscription filters the README recommends select exactly the results that need attention.

The Pub/Sub emulator accepts filters without applying them, so the filters are
evaluated here with a small interpreter of the filter language's subset they use
(attribute equality and inequality, ``attributes:KEY``, ``hasPrefix``, NOT, AND,
OR, parentheses), on the attributes our results really carry.
"""

import re
from pathlib import Path

import pytest

from handlers.privacy import NamePolicy
from handlers.batch.results import import_message

README = Path(__file__).resolve().parents[2] / "README.md"
TOKEN = re.compile(r'\s*(\(|\)|!=|=|:|,|"(?:[^"\\]|\\.)*"|[A-Za-z_][\w.-]*)')


def tokens(text):
    position, found = 0, []
    while position < len(text.rstrip()):
        match = TOKEN.match(text, position)
        assert match, f"cannot read filter at {text[position:]!r}"
        found.append(match.group(1))
        position = match.end()
    return found


def evaluate(filter_text, attributes):
    items = tokens(filter_text)

    def expression(i):
        value, i = term(i)
        operator = None
        while i < len(items) and items[i] in ("AND", "OR"):
            assert operator in (None, items[i]), "Pub/Sub needs parentheses to mix AND and OR"
            operator = items[i]
            right, i = term(i + 1)
            value = (value and right) if operator == "AND" else (value or right)
        return value, i

    def term(i):
        if items[i] == "NOT":
            value, i = term(i + 1)
            return not value, i
        if items[i] == "(":
            value, i = expression(i + 1)
            assert items[i] == ")"
            return value, i + 1
        if items[i] == "hasPrefix":
            assert items[i + 1] == "(" and items[i + 3] == "," and items[i + 5] == ")"
            key = items[i + 2].removeprefix("attributes.")
            return attributes.get(key, "").startswith(items[i + 4][1:-1]), i + 6
        if items[i] == "attributes" and items[i + 1] == ":":
            return items[i + 2] in attributes, i + 3
        key = items[i].removeprefix("attributes.")
        operator, literal = items[i + 1], items[i + 2][1:-1]
        assert operator in ("=", "!=")
        return (attributes.get(key) == literal) == (operator == "="), i + 3

    value, end = expression(0)
    assert end == len(items), f"unread tokens {items[end:]}"
    return value


def readme_filters():
    text = README.read_text()
    alert = re.search(r"--message-filter='([^']+)'", text).group(1)
    narrow = re.search(r"Narrower: `([^`]+)`", text).group(1)
    return alert, narrow


RECORD = {"batch": "b1", "rule": "all-dicom", "store": "projects/p/locations/l/datasets/d/dicomStores/s",
          "members": [{"id": "x", "bucket": "inbox-bkt", "name": "a.dcm", "generation": "1"}]}


def attributes_for(outcome):
    _, attributes = import_message(RECORD, outcome=outcome, names=NamePolicy(), manifest_uri="gs://s/m",
                                   concluded_at=1.0)
    return attributes


@pytest.mark.parametrize("outcome, alerts", [
    ("SUCCEEDED", False), ("PARTIAL", True), ("FAILED", True), ("REJECTED", True), ("UNKNOWN", True)])
def test_alert_filter_selects_every_outcome_but_success(outcome, alerts):
    alert, _ = readme_filters()
    assert evaluate(alert, attributes_for(outcome)) is alerts


@pytest.mark.parametrize("outcome, selected", [
    ("SUCCEEDED", False), ("PARTIAL", False), ("FAILED", True), ("REJECTED", True), ("UNKNOWN", False)])
def test_narrow_filter_selects_failed_and_rejected_imports(outcome, selected):
    _, narrow = readme_filters()
    assert evaluate(narrow, attributes_for(outcome)) is selected


def test_interpreter_handles_the_rest_of_the_subset():
    attributes = {"outcome": "FAILED", "rule": "ct-site1"}
    assert evaluate('hasPrefix(attributes.rule, "ct-")', attributes)
    assert evaluate("attributes:rule AND NOT attributes:batch", attributes)
    with pytest.raises(AssertionError):
        evaluate('attributes.outcome = "A" AND attributes.outcome = "B" OR attributes:rule', attributes)


def reconcile_attributes(admitted: int) -> dict:
    from handlers.reconcile.report import reconcile_message

    rules = {"all-dicom": {"bucket": "inbox", "prefix": "", "listed": 5, "inWindow": 5, "matched": 5,
                           "covered": 5 - admitted, "coveredByBackfill": 0, "admitted": admitted, "batches": []}}
    sweep = {"sweep": "s1", "window": {"from": 1.0, "to": 2.0}, "since": None, "rules": rules, "admitted": [],
             "resumed": 0, "startedAt": 1.0}
    return reconcile_message(sweep, NamePolicy(), finished_at=3.0, checkpoint_moved=True)[1]


@pytest.mark.parametrize("admitted, alerts", [(0, False), (2, True)])
def test_alert_filter_fires_when_a_reconcile_sweep_found_lost_events(admitted, alerts):
    alert, narrow = readme_filters()
    assert evaluate(alert, reconcile_attributes(admitted)) is alerts
    assert evaluate(narrow, reconcile_attributes(admitted)) is False, "the narrow filter is about imports"
