"""``reconcile --since``: durations, and the bound the claims' lifetime sets."""

import argparse

import pytest

from handlers.cli.reconcile import duration


@pytest.mark.parametrize("text, seconds", [("90m", 5400), ("6h", 21600), ("2d", 172800), ("3600", 3600),
                                           ("1.5h", 5400), ("29d", 29 * 86400)])
def test_durations(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text, words", [("30d", "at most 29d"), ("0", "more than 0"), ("soon", "not a duration"),
                                         ("6 hours", "not a duration")])
def test_bad_durations_say_why(text, words):
    with pytest.raises(argparse.ArgumentTypeError, match=words):
        duration(text)
