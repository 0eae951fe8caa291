"""A whole local stack with the end-to-end config (small batches, 3 s window), shared by tests/e2e.

``env`` is its stack.env (a module with its own stack overrides ``env``); ``reader``
reads the results topic of whichever ``env`` the test sees, drained first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from localstack.bridge import Backoff
from localstack.observe import ResultsReader
from localstack.stack import Stack

CONFIG = Path(__file__).with_name("config.yaml")
MAX_OBJECTS = 20
MAX_WAIT = 3.0
QUIET = 2.0  # batching.seal_after_quiet_seconds


@pytest.fixture(scope="session")
def e2e_stack(tmp_path_factory: pytest.TempPathFactory, stack_owner: tuple[int, int]) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("e2e-stack"), config=CONFIG, owner=stack_owner,
                  backoff=Backoff(initial=0.5, maximum=5.0))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def env(e2e_stack: Stack) -> dict[str, str]:
    return e2e_stack.env


@pytest.fixture
def reader(env: dict[str, str]) -> ResultsReader:
    """A reader of the results topic, past every result published before the test."""
    reader = ResultsReader(env)
    reader.drain(quiet=0.5)
    return reader
