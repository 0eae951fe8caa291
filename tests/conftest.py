"""Session fixtures: the real local services, started once per test session, lazily, on free ports.

* ``fake_gcs``: fake-gcs-server (a :class:`localstack.services.Service`; ``.url``,
  ``.env == {"STORAGE_EMULATOR_HOST": url}``);
* ``storage_client``: a ``google.cloud.storage.Client`` on ``fake_gcs`` (anonymous);
* ``pubsub_emulator``: Google's Pub/Sub emulator (``.env == {"PUBSUB_EMULATOR_HOST": "127.0.0.1:N"}``);
* ``healthcare_emulator``: ``python -m emulator`` reading from ``fake_gcs``
  (``.env == {"HEALTHCARE_EMULATOR_HOST": url}``);
* ``local_stack``: the whole stack (:class:`localstack.stack.Stack`), as ``make up`` starts it.

Per test, on ``storage_client``: ``bucket`` (a new, empty bucket) and ``upload`` (bytes into it,
returning the gs:// URI), for the emulator's tests and the real clients' tests.

These fixtures do not change ``os.environ``: pass ``service.env`` where a
client needs it. Each daemon runs in a temporary directory (logs in
``<tmp>/logs/NAME.log``) and is stopped at the end of the session, failed
tests or not. Daemons left by a killed test session are stopped when the
next one starts.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import pytest

from localstack.process import sweep_orphans
from localstack.services import (
    Service,
    owner_of_this_process,
    start_fake_gcs,
    start_healthcare_emulator,
    start_pubsub_emulator,
)
from localstack.stack import Stack
from tests.emulator.client import unique

#: Set by .ci/run: a skipped test fails the run, so CI never passes with a test left out.
NO_SKIPPED_TESTS = "NO_SKIPPED_TESTS"


def _fail_if_skipped(report: pytest.TestReport | pytest.CollectReport) -> None:
    """With ``NO_SKIPPED_TESTS=1``, a skipped report (a test, or a module skipped whole) fails, naming why."""
    if report.skipped and os.environ.get(NO_SKIPPED_TESTS) == "1" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped ({reason}), but {NO_SKIPPED_TESTS}=1: every test must run here"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    _fail_if_skipped(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_if_skipped(outcome.get_result())


@pytest.fixture(scope="session")
def stack_owner(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, int]:
    """This test session's (PID, start ticks), recorded in every daemon's PID file.

    First stops the daemons of earlier sessions that died without stopping them.
    """
    earlier_sessions = tmp_path_factory.getbasetemp().parent
    sweep_orphans(earlier_sessions.glob("pytest-*/**/run/*.pid"))
    return owner_of_this_process()


def _serve(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory, stack_owner: tuple[int, int]) -> Iterator[Service]:
    """fake-gcs-server, memory backend, no notifications."""
    yield from _serve(start_fake_gcs(tmp_path_factory.mktemp("fake-gcs"), owner=stack_owner))


@pytest.fixture(scope="session")
def storage_client(fake_gcs: Service):  # -> google.cloud.storage.Client
    """A google-cloud-storage client talking to ``fake_gcs`` with anonymous credentials."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="local-project",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": fake_gcs.url},
    )


@pytest.fixture
def bucket(storage_client: Any) -> Any:
    """A new, empty bucket in fake-gcs-server."""
    return storage_client.create_bucket(unique("bkt"))


@pytest.fixture
def upload(bucket: Any) -> Callable[[str, bytes], str]:
    """Upload bytes to ``bucket`` under a name; returns the gs:// URI."""

    def put(name: str, data: bytes) -> str:
        bucket.blob(name).upload_from_string(data)
        return f"gs://{bucket.name}/{name}"

    return put


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory, stack_owner: tuple[int, int]) -> Iterator[Service]:
    """Google's Pub/Sub emulator (empty: create topics and subscriptions in the test)."""
    yield from _serve(start_pubsub_emulator(tmp_path_factory.mktemp("pubsub"), owner=stack_owner))


@pytest.fixture(scope="session")
def healthcare_emulator(
    tmp_path_factory: pytest.TempPathFactory, fake_gcs: Service, stack_owner: tuple[int, int]
) -> Iterator[Service]:
    """The Healthcare API emulator, reading objects from ``fake_gcs``, no faults."""
    workdir = tmp_path_factory.mktemp("healthcare")
    yield from _serve(start_healthcare_emulator(workdir, storage_host=fake_gcs.url, owner=stack_owner))


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory, stack_owner: tuple[int, int]) -> Iterator[Stack]:
    """The whole stack as ``make up`` starts it: emulators, main.py's three functions, the bridge.

    Yields the :class:`localstack.stack.Stack`: ``.env`` (every key of
    docs/contracts.md plus ``BRIDGE_URL``), ``.services``, ``.functions``,
    ``.pubsub``/``.gcs``/``.healthcare``/``.bridge``, ``.bridge_status()``,
    ``.stop_service(name)``/``.start_service(name)``.
    """
    stack = Stack(tmp_path_factory.mktemp("stack"), owner=stack_owner)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
