"""``dicomStores.import``: validate the request, then import matching objects in the background.

Listing uses the pattern's literal prefix, matching uses ``handlers.wildcard``
(the same grammar as the function). Per object: stored, or ignored as a
duplicate (same UIDs, same bytes: counted as a success, since the API
"accepts duplicate DICOM instances by ignoring the newly-pushed instance"), or
failed (empty, not DICOM, truncated, missing UIDs, same UIDs with other bytes).
Each failure is an ERROR log line naming the object and a Cloud Logging
``ImportDicomLogEntry`` (emulator.cloudlogging) with the API's wording where
it is known: "empty DICOM instance found" (code 3), and for a changed re-send
the checksum-mismatch sentence users quote (:data:`CONFLICT_MESSAGE`).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Mapping

from emulator import jobs
from emulator.context import Emulator
from emulator.dicom import DicomError, parse_instance
from emulator.dicomstore import AddResult, DicomStore
from emulator.errors import ALREADY_EXISTS, INVALID_ARGUMENT, NOT_FOUND, ApiError, invalid
from emulator.faults import MethodFaults
from emulator.operations import Operation, api_method
from handlers.wildcard import GcsPattern, WildcardError, parse_gcs_uri

METHOD_ID = "dicomStores.import"
BLOB_STORAGE_CLASSES = ("BLOB_STORAGE_CLASS_UNSPECIFIED", "STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE")
EMPTY_MESSAGE = "empty DICOM instance found"
CONFLICT_MESSAGE = ("An instance already exists in this DICOM Store with the same Study/Series/SOPInstance UID, "
                    "but the DICOM files differ (checksum mismatch).")
# The code of a conflict entry is UNCONFIRMED (docs/emulator.md): ALREADY_EXISTS describes it.
CONFLICT_CODE = ALREADY_EXISTS


def parse_request(body: Mapping[str, Any]) -> GcsPattern:
    """The validated ``gcsSource.uri`` of an ``ImportDicomDataRequest`` (400 naming the problem)."""
    unknown = sorted(set(body) - {"gcsSource", "blobStorageSettings"})
    if unknown:
        raise invalid(f'Invalid JSON payload received. Unknown name "{unknown[0]}": use gcsSource and blobStorageSettings')
    source = body.get("gcsSource")
    if not isinstance(source, Mapping) or not source.get("uri"):
        raise invalid('gcsSource.uri is required, e.g. {"gcsSource": {"uri": "gs://BUCKET/DIR/**.dcm"}}', field="gcs_source.uri")
    settings = body.get("blobStorageSettings")
    if settings is not None:
        storage_class = settings.get("blobStorageClass") if isinstance(settings, Mapping) else settings
        if storage_class not in BLOB_STORAGE_CLASSES:
            raise invalid(
                f"blobStorageSettings.blobStorageClass must be one of {', '.join(BLOB_STORAGE_CLASSES)}, got {storage_class!r}",
                field="blob_storage_settings.blob_storage_class",
            )
    try:
        return parse_gcs_uri(source["uri"])
    except WildcardError as exc:
        raise invalid(str(exc), field="gcs_source.uri") from None


def start_import(emulator: Emulator, store: DicomStore, dataset: str, version: str, body: Mapping[str, Any]) -> Operation:
    pattern = parse_request(body)
    operation = emulator.operations.create(
        dataset, version, api_method(version, "dicom.DicomService", "ImportDicomData"), with_counter=True
    )
    emulator.log.info("import started", operation=operation.id, store=store.name, uri=pattern.uri)
    jobs.start(
        emulator,
        operation,
        METHOD_ID,
        "import",
        "dicom.ImportDicomDataResponse",
        lambda op, pacer, faults: _import(emulator, store, pattern, op, pacer, faults),
    )
    return operation


def _import(emulator: Emulator, store: DicomStore, pattern: GcsPattern, operation: Operation, pacer: jobs.Pacer,
            faults: MethodFaults) -> None:
    gcs = emulator.gcs_factory()
    try:
        if not gcs.bucket_exists(pattern.bucket):
            raise ApiError(
                NOT_FOUND,
                f"Cloud Storage bucket gs://{pattern.bucket} does not exist (gcsSource.uri {pattern.uri}): "
                "create it or fix the URI",
            )
        names = [name for name in gcs.list_names(pattern.bucket, pattern.literal_prefix) if pattern.matches(pattern.bucket, name)]
        if not names:
            raise ApiError(NOT_FOUND, f"no object in gs://{pattern.bucket} matches {pattern.uri}: nothing to import")
        operation.count(pending=len(names))
        with _Reader(emulator, pattern.bucket) as reader:
            for index, (name, data) in enumerate(zip(names, reader.read_all(names))):
                pacer.step(index, len(names))
                uri = f"gs://{pattern.bucket}/{name}"
                outcome, code, problem = _import_one(data, store)
                if outcome is AddResult.STORED:
                    operation.count(success=1, pending=-1)
                elif outcome is AddResult.DUPLICATE:
                    operation.count(success=1, pending=-1)
                    emulator.log.info(f"ignored {uri}: {problem}", operation=operation.id, object=uri, store=store.name)
                else:
                    operation.count(failure=1, pending=-1)
                    jobs.file_failed(emulator, operation, faults, "import", store.name, uri, code, problem, object=uri)
    finally:
        gcs.close()


class _Reader:
    """Reads objects with a few threads (as the real service reads files in parallel), yielding them in order."""

    THREADS = 8

    def __init__(self, emulator: Emulator, bucket: str) -> None:
        self._emulator = emulator
        self._bucket = bucket
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=self.THREADS, thread_name_prefix="import-read")

    def _read(self, name: str) -> bytes | ApiError:
        client = getattr(self._local, "gcs", None)
        if client is None:
            client = self._local.gcs = self._emulator.gcs_factory()
            with self._lock:
                self._clients.append(client)
        try:
            return client.read(self._bucket, name)
        except ApiError as exc:
            return exc

    def read_all(self, names: list[str]) -> Iterator[bytes | ApiError]:
        return self._pool.map(self._read, names)

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for client in self._clients:
            client.close()


def _import_one(data: bytes | ApiError, store: DicomStore) -> tuple[AddResult | None, int, str]:
    """What happened to one object (None: it failed before reaching the store), the canonical code, and why."""
    if isinstance(data, ApiError):
        return None, data.code, f"cannot read the object: {data.message}"
    if not data:
        return None, INVALID_ARGUMENT, EMPTY_MESSAGE
    try:
        instance = parse_instance(data)
    except DicomError as exc:
        return None, INVALID_ARGUMENT, str(exc)
    result = store.add(instance)
    if result is AddResult.DUPLICATE:
        return result, 0, f"duplicate of instance {instance.path} (same UIDs, same bytes): not stored again"
    if result is AddResult.CONFLICT:
        return result, CONFLICT_CODE, CONFLICT_MESSAGE
    return result, 0, ""
