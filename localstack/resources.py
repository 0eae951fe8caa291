"""Create the stack's buckets, topics, subscriptions, dataset and DICOM store. Every call is idempotent.

Each service is set up through its own REST API, as a real setup script would
(``POST /v1/projects/P/locations/L/datasets?datasetId=D`` for the dataset...).
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

import requests

from .names import Names
from .pubsub import PubSubRest

__all__ = ["ResourceError", "ensure_all", "ensure_buckets", "ensure_dicom_store", "ensure_pubsub"]


class ResourceError(RuntimeError):
    """A resource could not be created."""


def _check(response: requests.Response, what: str) -> bool:
    """True if created, False if it already existed; raise otherwise."""
    if response.status_code == 409:
        return False
    if response.status_code >= 300:
        raise ResourceError(f"creating {what}: HTTP {response.status_code}: {response.text.strip()[:300]}")
    return True


def ensure_buckets(storage_url: str, project: str, buckets: Iterable[str]) -> list[str]:
    """Create each bucket in the Cloud Storage stand-in at ``storage_url``; return those created."""
    created = []
    for bucket in buckets:
        response = requests.post(f"{storage_url}/storage/v1/b", params={"project": project}, json={"name": bucket}, timeout=10)
        if _check(response, f"bucket {bucket}"):
            created.append(bucket)
    return created


def ensure_pubsub(pubsub_host: str, names: Names, ack_deadline: int = 60) -> list[str]:
    """Create every topic, then every subscription, of ``names``; return the full names created."""
    client = PubSubRest(pubsub_host, timeout=10)
    created = []
    for topic in names.topics:
        path = names.topic_path(topic)
        if client.create_topic(path):
            created.append(path)
    for subscription, topic in names.subscriptions.items():
        path = names.subscription_path(subscription)
        if client.create_subscription(path, names.topic_path(topic), ack_deadline):
            created.append(path)
    return created


def _wait_operation(healthcare_url: str, operation: Mapping[str, Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not operation.get("done"):
        if time.monotonic() > deadline:
            raise ResourceError(f"operation {operation.get('name')} not done after {timeout:.0f} s")
        time.sleep(0.1)
        response = requests.get(f"{healthcare_url}/v1/{operation['name']}", timeout=10)
        if response.status_code >= 300:
            raise ResourceError(f"polling {operation.get('name')}: HTTP {response.status_code}: {response.text[:300]}")
        operation = response.json()
    if "error" in operation:
        raise ResourceError(f"operation {operation.get('name')} failed: {operation['error']}")


def ensure_dicom_store(healthcare_url: str, names: Names) -> list[str]:
    """Create the dataset (waiting for its operation if one is returned), then the DICOM store."""
    created = []
    parent = f"{healthcare_url}/v1/projects/{names.project}/locations/{names.location}"
    response = requests.post(f"{parent}/datasets", params={"datasetId": names.dataset}, json={}, timeout=10)
    if _check(response, f"dataset {names.dataset_path}"):
        answer = response.json()
        if "name" in answer and "/operations/" in answer["name"]:
            _wait_operation(healthcare_url, answer)
        created.append(names.dataset_path)
    response = requests.post(
        f"{healthcare_url}/v1/{names.dataset_path}/dicomStores", params={"dicomStoreId": names.store}, json={}, timeout=10
    )
    if _check(response, f"DICOM store {names.store_path}"):
        created.append(names.store_path)
    return created


def ensure_all(*, storage_url: str, pubsub_host: str, healthcare_url: str | None, names: Names) -> list[str]:
    """Every resource of the stack (the dataset and store only with ``healthcare_url``)."""
    created = ensure_pubsub(pubsub_host, names)
    created += [f"gs://{bucket}" for bucket in ensure_buckets(storage_url, names.project, names.buckets)]
    if healthcare_url:
        created += ensure_dicom_store(healthcare_url, names)
    return created
