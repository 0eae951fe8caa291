"""The chaos suite's stack (one per session, its own config) and the per-scenario report.

Scale: ``CHAOS_SCALE=short`` (default, part of ``make test``) or ``CHAOS_SCALE=long``
(``make chaos``). Each scenario appends one line to ``REPORT``; the lines are
printed at the end of the session, also with ``-q`` and when a scenario fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import requests

from localstack.bridge import Backoff
from localstack.stack import Stack
from tests.chaos.harness import Scale, scale_from_env

CONFIG = Path(__file__).with_name("config.yaml")
MAX_OBJECTS = 20  # batching.max_objects in config.yaml
MAX_WAIT = 3.0  # batching.max_wait_seconds

REPORT: list[str] = []


@pytest.fixture(scope="session")
def scale() -> Scale:
    return scale_from_env()


@pytest.fixture(scope="session")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory, stack_owner: tuple[int, int]) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("chaos-stack"), config=CONFIG, owner=stack_owner,
                  backoff=Backoff(initial=0.5, maximum=5.0))
    try:
        stack.start()
        yield stack
    finally:
        if "pubsub" in stack.services:
            stack.pubsub.resume()  # a stopped JVM would sit out SIGTERM until the SIGKILL
        stack.stop()


@pytest.fixture
def stack(chaos_stack: Stack) -> Iterator[Stack]:
    """The shared stack, healthy at the start of each scenario and again after it."""
    heal(chaos_stack)
    yield chaos_stack
    heal(chaos_stack)


def heal(stack: Stack) -> None:
    """Undo whatever a scenario may have left: faults, outages, lost events, a paused emulator, killed functions."""
    stack.pubsub.resume()
    for service in stack.functions.values():
        service.start()
    response = requests.delete(f"{stack.env['HEALTHCARE_EMULATOR_HOST'].rstrip('/')}/emulator/faults", timeout=10)
    response.raise_for_status()
    proxy = f"{stack.env['STORAGE_EMULATOR_HOST']}/proxy"
    requests.delete(f"{proxy}/faults", timeout=10).raise_for_status()
    requests.delete(f"{proxy}/outage", timeout=10).raise_for_status()
    requests.put(f"{stack.env['BRIDGE_URL']}/events", json={"drop": 0}, timeout=10).raise_for_status()


@pytest.fixture
def report() -> list[str]:
    return REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.write_sep("=", f"chaos scenarios (CHAOS_SCALE={scale_from_env().name})")
        for line in REPORT:
            terminalreporter.write_line(line)
