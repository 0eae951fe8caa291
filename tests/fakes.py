"""In-memory collaborators for unit tests of the batching protocol.

They keep the semantics the protocol relies on (generation preconditions,
list-after-write) so races and crashes can be staged deterministically.
End-to-end tests use the real services instead.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from handlers.clients.healthcare import ApiError, Operation
from handlers.retry import Deadline
from handlers.clients.storage import Conflict, Document, Listed, LiveObject, SourceGone, SourceObject
from tests.message_schemas import validate


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class MemoryStateStore:
    """A bucket of JSON documents and staged copies with Cloud Storage's preconditions."""

    def __init__(self, bucket: str = "state-bkt", clock: Callable[[], float] | None = None) -> None:
        self.bucket = bucket
        self.clock = clock or (lambda: 1_800_000_000.0)
        """Cloud Storage's clock: ``timeCreated`` of what is written, ``server_time``."""
        self.created: dict[str, float] = {}
        self.sources: dict[tuple[str, str, str], bytes] = {}
        self.docs: dict[str, tuple[str, int]] = {}
        self.blobs: dict[str, tuple[bytes, dict[str, str]]] = {}
        self._generations = itertools.count(1)
        self._lock = threading.RLock()
        self.after_marker: Callable[[str], None] | None = None
        self.ops: list[tuple[str, str]] = []
        self.source_metadata: dict[tuple[str, str, str], dict[str, str]] = {}
        """Custom metadata set on sources (tags), keyed like ``sources``; other buckets' copies are sources too."""

    def add_source(self, bucket: str, name: str, generation: str, content: bytes = b"DICM") -> None:
        self.sources[(bucket, name, generation)] = content

    def read(self, path: str) -> Document | None:
        with self._lock:
            self.ops.append(("read", path))
            if path not in self.docs:
                return None
            raw, generation = self.docs[path]
            return Document(json.loads(raw), generation)

    def _write(self, path: str, data: Mapping[str, Any], generation: int) -> int:
        with self._lock:
            current = self.docs.get(path, (None, 0))[1]
            if current != generation:
                raise Conflict(path)
            new = next(self._generations)
            self.docs[path] = (json.dumps(data), new)
            self.created[path] = self.clock()
            self.ops.append(("write", path))
            return new

    def create(self, path: str, data: Mapping[str, Any]) -> int:
        return self._write(path, data, 0)

    def replace(self, path: str, data: Mapping[str, Any], generation: int) -> int:
        return self._write(path, data, generation)

    def copy_in(self, source_bucket: str, source_name: str, source_generation: str, path: str,
                metadata: Mapping[str, str]) -> None:
        with self._lock:
            key = (source_bucket, source_name, source_generation)
            if key not in self.sources:
                raise SourceGone(str(key))
            self.blobs[path] = (self.sources[key], dict(metadata))
            self.ops.append(("copy", path))

    def write_marker(self, path: str, metadata: Mapping[str, str]) -> None:
        with self._lock:
            self.ops.append(("write", path))
            self.blobs[path] = (b"", dict(metadata))
            self.created[path] = self.clock()
        if self.after_marker:
            self.after_marker(path)

    def write_text(self, path: str, text: str) -> None:
        with self._lock:
            self.ops.append(("write", path))
            self.blobs[path] = (text.encode(), {})

    def list(self, prefix: str) -> Iterator[Listed]:
        with self._lock:
            self.ops.append(("list", prefix))
            found = []
            for name in sorted({*self.blobs, *self.docs}):
                if not name.startswith(prefix):
                    continue
                data, meta = self.blobs[name] if name in self.blobs else (self.docs[name][0].encode(), {})
                found.append(Listed(name, dict(meta), len(data), md5(data), self.created.get(name)))
        return iter(found)

    def read_range(self, path: str, start: int, length: int) -> bytes:
        with self._lock:
            self.ops.append(("read_range", path))
            return self.blobs[path][0][start:start + length]

    def write_bytes(self, path: str, data: bytes, metadata: Mapping[str, str]) -> int | None:
        with self._lock:
            if path in self.blobs:
                return None
            self.ops.append(("write", path))
            self.blobs[path] = (data, dict(metadata))
            return next(self._generations)

    def tag_source(self, bucket: str, name: str, generation: str, metadata: Mapping[str, str]) -> bool:
        with self._lock:
            self.ops.append(("tag", f"{bucket}/{name}#{generation}"))
            if (bucket, name, generation) not in self.sources:
                return False
            self.source_metadata.setdefault((bucket, name, generation), {}).update(metadata)
            return True

    def copy_source(self, bucket: str, name: str, generation: str, to_bucket: str, to_name: str,
                    metadata: Mapping[str, str]) -> bool:
        with self._lock:
            self.ops.append(("copy_source", f"{bucket}/{name}#{generation} -> {to_bucket}/{to_name}"))
            if (bucket, name, generation) not in self.sources:
                return False
            if self.source_in(to_bucket, to_name) is not None:
                raise Conflict(f"gs://{to_bucket}/{to_name}")
            target = (to_bucket, to_name, str(next(self._generations)))
            self.sources[target] = self.sources[(bucket, name, generation)]
            self.source_metadata[target] = dict(metadata)
            return True

    def delete_source(self, bucket: str, name: str, generation: str) -> bool:
        with self._lock:
            self.ops.append(("delete_source", f"{bucket}/{name}#{generation}"))
            return self.sources.pop((bucket, name, generation), None) is not None

    def live_source(self, bucket: str, name: str) -> LiveObject | None:
        """The newest generation of ``gs://bucket/name`` (tests add a newer one to overwrite)."""
        with self._lock:
            self.ops.append(("live_source", f"{bucket}/{name}"))
            generations = [g for (b, n, g) in self.sources if (b, n) == (bucket, name)]
            if not generations:
                return None
            generation = max(generations, key=int)
            data = self.sources[(bucket, name, generation)]
            return LiveObject(generation, len(data), md5(data), dict(self.source_metadata.get((bucket, name, generation), {})))

    def read_source_range(self, bucket: str, name: str, generation: str, start: int, length: int) -> bytes:
        with self._lock:
            self.ops.append(("read_source_range", f"{bucket}/{name}#{generation}"))
            if (bucket, name, generation) not in self.sources:
                raise SourceGone(f"gs://{bucket}/{name}#{generation}")
            return self.sources[(bucket, name, generation)][start:start + length]

    def source_in(self, bucket: str, name: str) -> tuple[str, bytes, dict[str, str]] | None:
        """(generation, bytes, metadata) of the live object ``gs://bucket/name``, if any."""
        for (b, n, generation), data in self.sources.items():
            if (b, n) == (bucket, name):
                return generation, data, self.source_metadata.get((b, n, generation), {})
        return None

    def server_time(self, path: str) -> float:
        with self._lock:
            self.ops.append(("write", path))
            self.blobs[path] = (b"", {})
            return self.clock()

    def delete(self, path: str) -> None:
        with self._lock:
            self.ops.append(("delete", path))
            self.blobs.pop(path, None)
            self.docs.pop(path, None)

    def doc(self, path: str) -> dict[str, Any]:
        return json.loads(self.docs[path][0])


def md5(data: bytes) -> str:
    """Base64 MD5, as Cloud Storage reports ``md5Hash``."""
    return base64.b64encode(hashlib.md5(data).digest()).decode()


class MemorySource:
    """Watched buckets for the reconcile sweep: the store's sources, each with its creation time."""

    def __init__(self, store: MemoryStateStore) -> None:
        self.store = store
        self.times: dict[tuple[str, str, str], float] = {}
        self.calls: list[tuple[str, str, str | None]] = []

    def add(self, bucket: str, name: str, generation: str, created: float) -> None:
        self.store.add_source(bucket, name, generation)
        self.times[(bucket, name, generation)] = created

    def list(self, bucket: str, prefix: str, start_offset: str | None = None) -> Iterator[SourceObject]:
        self.calls.append((bucket, prefix, start_offset))
        found = sorted((name, generation, created) for (b, name, generation), created in self.times.items()
                       if b == bucket and name.startswith(prefix) and (start_offset is None or name >= start_offset))
        return iter([SourceObject(name, generation, created) for name, generation, created in found])


@dataclass
class FakeApi:
    """Import calls and operations, scripted by the test."""

    import_errors: list[ApiError] = field(default_factory=list)
    imports: list[tuple[str, str]] = field(default_factory=list)
    exports: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    get_errors: list[ApiError] = field(default_factory=list)
    stored: set[str] | None = None
    """Resource paths QIDO finds (``/studies/S[/series/R[/instances/I]]``); None: any path."""
    searches: list[str] = field(default_factory=list)
    instances: dict[str, bytes] = field(default_factory=dict)
    """Stored instances by DICOMweb path ``studies/S/series/SE/instances/I`` (WADO, DELETE, series searches)."""
    deleted: list[str] = field(default_factory=list)

    def import_dicom(self, store: str, uri: str, deadline: Deadline, blob_storage_class: str | None = None) -> Operation:
        if self.import_errors:
            raise self.import_errors.pop(0)
        self.imports.append((store, uri))
        name = f"projects/p/locations/l/datasets/d/operations/{len(self.imports)}"
        self.operations[name] = {"name": name, "metadata": {"counter": {}}}
        return Operation.parse(self.operations[name])

    def finish(self, name: str, success: int = 0, failure: int = 0, error: dict[str, Any] | None = None) -> None:
        counter = {k: str(v) for k, v in (("success", success), ("failure", failure)) if v}
        body: dict[str, Any] = {"name": name, "done": True,
                                "metadata": {"counter": counter, "logsUrl": "https://console.cloud.google.com/logs/x"}}
        if error:
            body["error"] = error
        else:
            body["response"] = {"@type": "type.googleapis.com/google.cloud.healthcare.v1.dicom.ImportDicomDataResponse"}
        self.operations[name] = body

    def export_dicom(self, store: str, body: Mapping[str, Any], deadline: Deadline) -> Operation:
        if self.import_errors:
            raise self.import_errors.pop(0)
        self.exports.append((store, dict(body)))
        name = f"projects/p/locations/l/datasets/d/operations/export-{len(self.exports)}"
        self.operations[name] = {"name": name, "metadata": {"counter": {}}}
        return Operation.parse(self.operations[name])

    def search_dicom(self, store: str, resource: str, params: Mapping[str, str], deadline: Deadline) -> list[dict[str, Any]]:
        if resource.endswith("/instances") and set(params) <= {"includefield", "limit"}:  # every instance of a series
            self.searches.append(f"/{resource}")
            prefix = resource + "/"
            return [{"00080018": {"vr": "UI", "Value": [path.rsplit("/", 1)[-1]]}}
                    for path in self.instances if path.startswith(prefix)]
        uid = next(value for key, value in params.items() if key != "limit")
        path = f"/{resource}/{uid}"
        self.searches.append(path)
        return [{}] if self.stored is None or path in self.stored else []

    def retrieve_instance(self, store: str, path: str, deadline: Deadline) -> bytes:
        if path not in self.instances:
            raise ApiError(404, "NOT_FOUND", f"{path} not found")
        return self.instances[path]

    def delete_instance(self, store: str, path: str, deadline: Deadline) -> bool:
        self.deleted.append(path)
        return self.instances.pop(path, None) is not None

    def wait(self, name: str, deadline: Deadline, poll: Any = None) -> Operation:
        if self.get_errors:
            raise self.get_errors.pop(0)
        return Operation.parse(copy.deepcopy(self.operations[name]))


@dataclass
class FakePublisher:
    messages: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    failures: int = 0

    """Validates every message against its published JSON Schema before accepting it."""

    def publish(self, topic: str, data: Mapping[str, Any], attributes: Mapping[str, str], timeout: float = 0) -> str:
        if self.failures:
            self.failures -= 1
            raise TimeoutError("publish timed out")
        validate(data, attributes)
        self.messages.append((topic, dict(data), dict(attributes)))
        return str(len(self.messages))


@dataclass
class FakeLogging:
    """Cloud Logging's entries.list over entries a test adds; counts calls, can be told to fail."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    queries: list[str] = field(default_factory=list)
    errors: list[ApiError] = field(default_factory=list)

    def add(self, operation: str, source: str, message: str, code: int = 3) -> None:
        self.entries.append({"operation": {"id": operation}, "jsonPayload": {
            "@type": "type.googleapis.com/google.cloud.healthcare.logging.ImportDicomLogEntry",
            "source": source, "error": {"code": code, "message": message}}})

    def list_entries(self, project: str, query: str, deadline: Deadline, order_by: str = "timestamp asc"):
        self.calls += 1
        self.queries.append(query)
        if self.errors:
            raise self.errors.pop(0)
        operations = [e for e in self.entries if f'operation.id="{e["operation"]["id"]}"' in query]
        return iter(copy.deepcopy(operations))
