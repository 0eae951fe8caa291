"""Per-test helpers on top of the session fixtures (``healthcare_emulator``; ``bucket`` and ``upload``: tests/conftest.py)."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from tests.emulator.client import Api, StoreRef


@pytest.fixture(scope="session")
def api(healthcare_emulator: Any) -> Api:
    return Api(healthcare_emulator.url)


@pytest.fixture
def store(api: Api) -> StoreRef:
    """A new dataset (in its own location) holding one new DICOM store."""
    return api.new_store()


@pytest.fixture
def faults(api: Api) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Set the emulator's faults for this test; cleared afterwards."""

    def put(spec: dict[str, Any]) -> None:
        response = api.admin("PUT", "faults", json=spec)
        assert response.status_code == 200, response.text

    yield put
    api.admin("DELETE", "faults")


@pytest.fixture
def settings(api: Api) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Change the emulator's settings for this test; restored afterwards."""
    before = api.admin("GET", "config").json()

    def put(changes: dict[str, Any]) -> None:
        response = api.admin("PUT", "config", json=changes)
        assert response.status_code == 200, response.text

    yield put
    api.admin("PUT", "config", json=before)
