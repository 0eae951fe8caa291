"""Real clients against the running emulator: Google's discovery-based client and dicomweb-client.

Session fixtures from tests/conftest.py (``healthcare_emulator``, ``storage_client``)
start one emulator and one fake-gcs-server for the whole run; ``bucket`` and ``upload``
come from there too. Every test writes under its own location, dataset, store and
bucket (``unique`` names), so tests never see each other's data. Helpers here call the emulator only through the
real clients, except :func:`wait` which polls with the discovery client too.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest

from localstack.samples import bundled_bytes, make_series, new_uid, with_new_uids
from tests.emulator.client import PROJECT, unique


def _discovery_client(url: str, **options: Any) -> Any:
    """Google's discovery-based Healthcare v1 client at ``url`` (the discovery document bundled in the wheel)."""
    from google.auth.credentials import AnonymousCredentials
    from googleapiclient import discovery

    return discovery.build(
        "healthcare",
        "v1",
        client_options={"api_endpoint": url},
        credentials=AnonymousCredentials(),
        static_discovery=True,
        **options,
    )


@pytest.fixture(scope="session")
def healthcare(healthcare_emulator: Any) -> Any:
    """Google's discovery-based client, built from the discovery document bundled in the wheel."""
    return _discovery_client(healthcare_emulator.url)


@pytest.fixture(scope="session")
def healthcare_raw(healthcare_emulator: Any) -> Any:
    """The same client with ``RawModel``: response bodies as bytes, for DICOMweb retrieval."""
    from googleapiclient.model import RawModel

    return _discovery_client(healthcare_emulator.url, model=RawModel())


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
def loaded_store(datasets: Any, store: str, upload: Callable[[str, bytes], str]) -> tuple[str, str, list, tuple]:
    """A new store holding study A (patient P-A: CT series of 2, MR series of 1) and study B (patient P-B:
    one implicit VR MR instance), imported from Cloud Storage with the discovery client.

    Returns ``(store, study A's UID, study A's items, study B's item)``; an item is
    ``(uids, data)`` as :mod:`localstack.samples` makes it.
    """
    study_a = new_uid()
    items = make_series(2, study_uid=study_a, modality="CT", patient_id="P-A") + make_series(
        1, study_uid=study_a, modality="MR", series_number=2, patient_id="P-A"
    )
    implicit = with_new_uids(bundled_bytes("MR_small_implicit.dcm"))
    for uids, data in items + [implicit]:
        upload(f"load/{uids.sop}.dcm", data)
    uri = upload("load/x", b"").rsplit("/", 1)[0] + "/*.dcm"
    done = wait(datasets, datasets.dicomStores().import_(name=store, body={"gcsSource": {"uri": uri}}).execute())
    assert done["metadata"]["counter"] == {"success": "4"}
    return store, study_a, items, implicit


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
