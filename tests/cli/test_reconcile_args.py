"""``reconcile --since``: durations, the bound the claims' lifetime sets, and an interrupted sweep in the way."""

import argparse
from types import SimpleNamespace

import pytest

from handlers.cli.context import Context
from handlers.cli.reconcile import duration
from handlers.reconcile.progress import UnfinishedSweep


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
