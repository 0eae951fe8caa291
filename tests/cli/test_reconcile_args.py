"""``reconcile --since``: durations, the bound the claims' lifetime sets, and an interrupted sweep in the way."""

import argparse
from types import SimpleNamespace

import pytest

from handlers.cli.context import Context
from handlers.cli.reconcile import duration
from handlers.reconcile.progress import UnfinishedSweep
from handlers.retry import RetryLater


@pytest.mark.parametrize("text, seconds", [("90m", 5400), ("6h", 21600), ("2d", 172800), ("3600", 3600),
                                           ("1.5h", 5400), ("29d", 29 * 86400)])
def test_durations(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text, words", [("30d", "at most 29d"), ("0", "more than 0"), ("soon", "not a duration"),
                                         ("6 hours", "not a duration")])
def test_bad_durations_say_why(text, words):
    with pytest.raises(argparse.ArgumentTypeError, match=words):
        duration(text)


def test_since_over_an_interrupted_sweep_says_how_to_finish_it(cli, config_env, monkeypatch):
    def run(deadline, since=None):
        raise UnfinishedSweep("sweep s-1 (objects created A .. B) was interrupted and is not finished")

    monkeypatch.setattr(Context, "runtime", property(lambda self: SimpleNamespace(reconciler=SimpleNamespace(run=run))))
    result = cli("reconcile", "--since", "1h")
    assert result.code == 1 and result.out == ""
    assert result.err == ("error: sweep s-1 (objects created A .. B) was interrupted and is not finished: --since "
                          "never discards it; finish it first with `python -m handlers reconcile` (no --since; the "
                          "next scheduled sweep does too), then run --since again\n")


@pytest.mark.parametrize("timeout, budget", [("0", 0.0), ("90s", 90.0), (None, 7 * 24 * 3600.0)])
def test_a_zero_timeout_is_one_page_not_no_limit(cli, config_env, monkeypatch, timeout, budget):
    budgets = []

    def run(deadline, since=None):
        budgets.append(deadline.seconds)
        raise RetryLater("out of budget")

    monkeypatch.setattr(Context, "runtime", property(lambda self: SimpleNamespace(reconciler=SimpleNamespace(run=run))))
    result = cli("reconcile", *(["--timeout", timeout] if timeout is not None else []))
    assert result.code == 1 and budgets == [budget]


@pytest.mark.parametrize("argv, words", [
    (["reconcile", "--timeout", "-1"], "argument --timeout: '-1' is negative: give a duration of 0 or more"),
    (["reconcile", "--since", "99999999999d"], "argument --since: '99999999999d': give more than 0 and at most 29d"),
    (["failures", "--since", "99999999999d"], "argument --since: '99999999999d' is too long: give at most 3650d"),
    (["retry", "--failed-since", "9" * 400], "is too long: give at most 3650d"),
    (["backfill", "gs://inbox-bkt/", "--timeout", "-5"], "argument --timeout: '-5' is negative"),
    (["tail", "--timeout", "1e999"], "argument --timeout: '1e999' is not a duration"),
])
def test_bad_durations_are_one_usage_line(cli, config_env, argv, words):
    result = cli(*argv)
    assert result.code == 2 and words in result.err and "Traceback" not in result.err
    assert len(result.err.splitlines()) == 1
