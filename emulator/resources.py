"""Datasets and DICOM stores: names, ids, and the in-memory registry (thread-safe)."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from emulator.dicomstore import DicomStore
from emulator.errors import ALREADY_EXISTS, ApiError, invalid, not_found

# datasetId: [\p{L}\p{N}_\-\.]{1,256} in the reference; \w covers Unicode letters, digits and '_'.
DATASET_ID = re.compile(r"[\w.\-]{1,256}")
# dicomStoreId: "any string value up to 256 characters"; '/' and ':' would break resource paths.
STORE_ID = re.compile(r"[^/:\s]{1,256}")

# Fields of the DicomStore resource the emulator keeps and echoes (it acts on none of them).
STORE_FIELDS = ("labels", "notificationConfig", "notificationConfigs", "streamConfigs")
DATASET_FIELDS = ("timeZone", "encryptionSpec")
# The proto3 JSON form each echoed field must have: the API's parser refuses another with 400 "Invalid value at ...".
_MAP, _MESSAGE, _MESSAGES, _STRING = "map<string, string>", "object", "list of objects", "string"
FIELD_TYPES = {"labels": _MAP, "notificationConfig": _MESSAGE, "notificationConfigs": _MESSAGES,
               "streamConfigs": _MESSAGES, "timeZone": _STRING, "encryptionSpec": _MESSAGE}


@dataclass
class Dataset:
    name: str
    config: dict[str, Any]
    stores: dict[str, DicomStore] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **self.config}


def _well_typed(kind: str, value: Any) -> bool:
    if kind == _MAP:
        return isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values())
    if kind == _MESSAGE:
        return isinstance(value, Mapping)
    if kind == _MESSAGES:
        return isinstance(value, list) and all(isinstance(v, Mapping) for v in value)
    return isinstance(value, str)


def _resource_fields(body: Mapping[str, Any], allowed: tuple[str, ...], kind: str, prefix: str) -> dict[str, Any]:
    """The fields of ``body`` the emulator echoes (null ones dropped, as proto3 JSON reads null as unset).

    400 for a field the emulator does not keep, or one whose JSON is not of the field's type (labels "x").
    """
    unknown = sorted(k for k in body if k not in allowed and k != "name")
    if unknown:
        raise invalid(
            f'Invalid JSON payload received. Unknown name "{unknown[0]}" in {kind}: '
            f"the emulator accepts {', '.join(allowed)}"
        )
    out = {}
    for key in allowed:
        value = body.get(key)
        if value is None:
            continue
        if not _well_typed(FIELD_TYPES[key], value):
            path = f"{prefix}.{re.sub(r'([A-Z])', lambda m: '_' + m.group(1).lower(), key)}"
            raise invalid(f"Invalid JSON payload received. Invalid value at '{path}': {kind}.{key} must be a "
                          f"{FIELD_TYPES[key]}, got {json.dumps(value)}", field=path)
        out[key] = value
    return out


class Registry:
    """Every dataset and DICOM store of the emulator."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._datasets: dict[str, Dataset] = {}

    def clear(self) -> None:
        with self._lock:
            self._datasets.clear()

    # datasets
    def create_dataset(self, parent: str, dataset_id: str | None, body: Mapping[str, Any]) -> Dataset:
        if not dataset_id:
            raise invalid("datasetId is required: add ?datasetId=ID to the URL", field="dataset_id")
        if not DATASET_ID.fullmatch(dataset_id):
            raise invalid(
                f"datasetId {dataset_id!r} is invalid: use 1-256 letters, digits, '_', '-' or '.'", field="dataset_id"
            )
        config = _resource_fields(body, DATASET_FIELDS, "Dataset", "dataset")
        name = f"{parent}/datasets/{dataset_id}"
        with self._lock:
            if name in self._datasets:
                raise ApiError(ALREADY_EXISTS, f"dataset {name} already exists")
            dataset = Dataset(name, config)
            self._datasets[name] = dataset
            return dataset

    def dataset(self, name: str) -> Dataset:
        with self._lock:
            found = self._datasets.get(name)
        if found is None:
            raise not_found(f"dataset {name} not found: create it with POST .../datasets?datasetId=ID")
        return found

    def datasets(self, parent: str) -> list[Dataset]:
        with self._lock:
            return [d for n, d in sorted(self._datasets.items()) if n.startswith(parent + "/datasets/")]

    def delete_dataset(self, name: str) -> None:
        with self._lock:
            self.dataset(name)
            del self._datasets[name]

    # DICOM stores
    def create_store(self, dataset_name: str, store_id: str | None, body: Mapping[str, Any]) -> DicomStore:
        if not store_id:
            raise invalid("dicomStoreId is required: add ?dicomStoreId=ID to the URL", field="dicom_store_id")
        if not STORE_ID.fullmatch(store_id):
            raise invalid(
                f"dicomStoreId {store_id!r} is invalid: use 1-256 characters without '/', ':' or spaces",
                field="dicom_store_id",
            )
        config = _resource_fields(body, STORE_FIELDS, "DicomStore", "dicom_store")
        with self._lock:
            dataset = self.dataset(dataset_name)
            if store_id in dataset.stores:
                raise ApiError(ALREADY_EXISTS, f"DICOM store {dataset_name}/dicomStores/{store_id} already exists")
            store = DicomStore(f"{dataset_name}/dicomStores/{store_id}", config)
            dataset.stores[store_id] = store
            return store

    def store(self, dataset_name: str, store_id: str) -> DicomStore:
        with self._lock:
            dataset = self.dataset(dataset_name)
            found = dataset.stores.get(store_id)
        if found is None:
            raise not_found(
                f"DICOM store {dataset_name}/dicomStores/{store_id} not found: "
                "create it with POST .../dicomStores?dicomStoreId=ID"
            )
        return found

    def stores(self, dataset_name: str) -> list[DicomStore]:
        with self._lock:
            dataset = self.dataset(dataset_name)
            return [s for _, s in sorted(dataset.stores.items())]

    def delete_store(self, dataset_name: str, store_id: str) -> None:
        with self._lock:
            self.store(dataset_name, store_id)
            del self.dataset(dataset_name).stores[store_id]
