"""A small HTTP client for the emulator's API and admin endpoints, for tests."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import requests

PROJECT = "emu-project"


def unique(prefix: str) -> str:
    """A short unique name (tests never depend on each other's data)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class StoreRef:
    location: str
    dataset: str  # full name
    name: str  # full name

    @property
    def web(self) -> str:
        return f"{self.name}/dicomWeb"


class Api:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()

    def call(self, method: str, path: str, *, version: str = "v1", **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.url}/{version}/{path}", timeout=30, **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.url}/emulator/{path}", timeout=30, **kwargs)

    def new_store(self, location: str | None = None) -> StoreRef:
        location = location or unique("loc")
        parent = f"projects/{PROJECT}/locations/{location}"
        dataset_id, store_id = unique("ds"), unique("store")
        self.ok("POST", f"{parent}/datasets", params={"datasetId": dataset_id})
        dataset = f"{parent}/datasets/{dataset_id}"
        self.ok("POST", f"{dataset}/dicomStores", params={"dicomStoreId": store_id})
        return StoreRef(location, dataset, f"{dataset}/dicomStores/{store_id}")

    def start_import(self, store: StoreRef, uri: str) -> dict[str, Any]:
        return self.ok("POST", f"{store.name}:import", json={"gcsSource": {"uri": uri}})

    def start_export(self, store: StoreRef, body: dict[str, Any]) -> dict[str, Any]:
        return self.ok("POST", f"{store.name}:export", json=body)

    def wait(self, operation: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            current = self.ok("GET", operation["name"])
            if current.get("done"):
                return current
            assert time.monotonic() < deadline, f"operation not done after {timeout}s: {current}"
            time.sleep(0.02)

    def import_and_wait(self, store: StoreRef, uri: str) -> dict[str, Any]:
        return self.wait(self.start_import(store, uri))

    def qido(self, store: StoreRef, path: str, **params: Any) -> list[dict[str, Any]]:
        response = self.call("GET", f"{store.web}/{path}", params=params)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("application/dicom+json")
        return response.json()

    def sop_uids(self, store: StoreRef) -> set[str]:
        return {r["00080018"]["Value"][0] for r in self.qido(store, "instances")}

    def logs(self, operation: dict[str, Any]) -> list[dict[str, Any]]:
        response = self.admin("GET", "logs", params={"operation": operation["name"]})
        assert response.status_code == 200, response.text
        return response.json()["entries"]

    def stats(self) -> dict[str, int]:
        return self.admin("GET", "stats").json()


def counter(operation: dict[str, Any]) -> dict[str, str]:
    return operation["metadata"].get("counter", {})


def assert_google_error(response: requests.Response, http: int, status: str, *fragments: str) -> dict[str, Any]:
    """The response is a Google JSON error with this code and status, and its message has each fragment."""
    assert response.status_code == http, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "status", "details"}
    assert (error["code"], error["status"]) == (http, status)
    assert isinstance(error["details"], list)
    for fragment in fragments:
        assert fragment in error["message"], f"{fragment!r} not in {error['message']!r}"
    return error
