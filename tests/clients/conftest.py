"""Real clients against the running emulator: Google's discovery-based client and dicomweb-client.

Session fixtures from tests/conftest.py (``healthcare_emulator``, ``storage_client``)
start one emulator and one fake-gcs-server for the whole run. Every test writes
under its own location, dataset, store and bucket (``unique`` names), so tests
never see each other's data. Helpers here call the emulator only through the
real clients, except :func:`wait` which polls with the discovery client too.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest

from tests.emulator.client import PROJECT, unique


@pytest.fixture(scope="session")
def healthcare(healthcare_emulator: Any) -> Any:
    """Google's discovery-based client, built from the discovery document bundled in the wheel."""
    from google.auth.credentials import AnonymousCredentials
    from googleapiclient import discovery

    return discovery.build(
        "healthcare",
        "v1",
        client_options={"api_endpoint": healthcare_emulator.url},
        credentials=AnonymousCredentials(),
        static_discovery=True,
    )


@pytest.fixture(scope="session")
def healthcare_raw(healthcare_emulator: Any) -> Any:
    """The same client with ``RawModel``: response bodies as bytes, for DICOMweb retrieval."""
    from google.auth.credentials import AnonymousCredentials
    from googleapiclient import discovery
    from googleapiclient.model import RawModel

    return discovery.build(
        "healthcare",
        "v1",
        client_options={"api_endpoint": healthcare_emulator.url},
        credentials=AnonymousCredentials(),
        static_discovery=True,
        model=RawModel(),
    )


@pytest.fixture
def datasets(healthcare: Any) -> Any:
    """``projects().locations().datasets()`` of the discovery client."""
    return healthcare.projects().locations().datasets()


@pytest.fixture
def location() -> str:
    """A location of its own for this test (datasets.list then sees only this test's datasets)."""
    return f"projects/{PROJECT}/locations/{unique('loc')}"


@pytest.fixture
def store(datasets: Any, location: str) -> str:
    """The full name of a new DICOM store in a new dataset, created with the discovery client."""
    dataset_id = unique("ds")
    datasets.create(parent=location, datasetId=dataset_id, body={}).execute()
    created = datasets.dicomStores().create(
        parent=f"{location}/datasets/{dataset_id}", dicomStoreId=unique("store"), body={}
    ).execute()
    return created["name"]


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


def dataset_of(store: str) -> str:
    """``projects/P/locations/L/datasets/D`` of a store's full name."""
    return store.split("/dicomStores/")[0]


def wait(datasets: Any, operation: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    """Poll ``operations.get`` until the operation is done, as the seed's samples do."""
    deadline = time.monotonic() + timeout
    while not operation.get("done"):
        assert time.monotonic() < deadline, f"operation not done after {timeout}s: {operation}"
        time.sleep(0.02)
        operation = datasets.operations().get(name=operation["name"]).execute()
    return operation
