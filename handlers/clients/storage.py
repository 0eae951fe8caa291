"""Durable state in a Cloud Storage bucket: JSON documents with generation preconditions.

Everything the batching needs to survive an instance's death lives here (or in
Pub/Sub): leases, idempotency claims, staging copies and batch records.
Cloud Storage's strong read-after-write and list-after-write consistency, and
``ifGenerationMatch`` preconditions, are what make the protocol in
``docs/design.md`` safe.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol

from handlers.clients.rest import environment_read_once
from handlers.privacy import NameFree, described, error_reason, error_text
from handlers.retry import transient

# Cloud Storage accepts about one write per second to one object name and answers 429 beyond it
# (cloud.google.com/storage/quotas). A process does not send a write it knows would be refused:
# it waits until this long after its own last write of the same name.
SAME_NAME_WRITE_INTERVAL = 1.0
# Connections an instance keeps open to Cloud Storage: one per request it serves at once. requests'
# default keeps 10; past that every call opened (and closed) a connection of its own.
POOL_CONNECTIONS = 100
# 4xx answers to a copy that asking again may change (the caller's credentials, a timeout, quota, a cancelled
# call); any other 4xx but 404 refuses that generation for good (SourceUnreadable).
TRANSIENT_CLIENT_CODES = frozenset({401, 408, 429, 499})


class Conflict(Exception):
    """A precondition failed: someone else created or changed the document first."""


class SourceGone(Exception):
    """The object generation to copy no longer exists (overwritten or deleted)."""


class BucketMissing(Exception):
    """The bucket a copy goes to does not exist."""

    def __init__(self, bucket: str) -> None:
        super().__init__(f"gs://{bucket} does not exist")
        self.bucket = bucket


class SourceUnreadable(Exception):
    """The object generation can never be copied as asked: Cloud Storage refuses it for good, or it is no number.

    ``reason`` names no object (error messages and URLs do, so they are left out).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SourceCallFailed(NameFree):
    """A call on an object of another bucket (a watched bucket, a quarantine bucket) failed; the text names no object.

    The error it replaces may name the object anywhere (the request URL, the
    server's message, a requests error's URL after the client's retries): a
    Google API error keeps its class, code and message without the call's object
    names; any other keeps its class only (:func:`handlers.privacy.described`).
    ``code`` is the HTTP status (None without one); ``transient`` whether asking
    again may cure it (:func:`handlers.retry.transient`).
    """

    def __init__(self, call: str, exc: BaseException, names: tuple[str, ...]) -> None:
        from google.api_core.exceptions import GoogleAPICallError

        google = isinstance(exc, GoogleAPICallError)
        super().__init__(f"Cloud Storage {call} failed: {error_text(exc, names) if google else described(exc)}")
        self.code: int | None = exc.code if isinstance(exc, GoogleAPICallError) else None
        self.transient = transient(exc)


@contextmanager
def naming_no_object(call: str, *names: str) -> Iterator[None]:
    """Any error of the calls inside but this module's own becomes a :class:`SourceCallFailed` without ``names``."""
    try:
        yield
    except (Conflict, SourceGone, BucketMissing, SourceUnreadable):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever its text says may hold a name
        raise SourceCallFailed(call, exc, names) from None


@dataclass(frozen=True)
class Document:
    data: dict[str, Any]
    generation: int


@dataclass(frozen=True)
class Listed:
    name: str
    metadata: Mapping[str, str]
    size: int = 0
    md5: str = ""
    """Base64 MD5 of the content, as Cloud Storage gives it ('' when unknown)."""
    created: float | None = None
    """``timeCreated`` of this generation (Cloud Storage's clock), epoch seconds."""


@dataclass(frozen=True)
class LiveObject:
    """The live generation of an object in another bucket: its size, Base64 MD5 ('' when unknown), custom metadata."""

    generation: str
    size: int
    md5: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceObject:
    """One object generation listed in a watched bucket, with its ``timeCreated`` (epoch seconds)."""

    name: str
    generation: str
    created: float


class StateStore(Protocol):
    """What the batching protocol needs from Cloud Storage."""

    bucket: str

    def read(self, path: str) -> Document | None: ...

    def create(self, path: str, data: Mapping[str, Any]) -> int: ...

    def replace(self, path: str, data: Mapping[str, Any], generation: int) -> int: ...

    def copy_in(self, source_bucket: str, source_name: str, source_generation: str, path: str,
                metadata: Mapping[str, str]) -> None: ...

    def write_text(self, path: str, text: str) -> None: ...

    def write_marker(self, path: str, metadata: Mapping[str, str]) -> None: ...

    def list(self, prefix: str) -> Iterator[Listed]: ...

    def delete(self, path: str) -> None: ...

    def read_range(self, path: str, start: int, length: int) -> bytes: ...

    def write_bytes(self, path: str, data: bytes, metadata: Mapping[str, str]) -> int | None: ...

    def tag_source(self, bucket: str, name: str, generation: str, metadata: Mapping[str, str]) -> bool: ...

    def copy_source(self, bucket: str, name: str, generation: str, to_bucket: str, to_name: str,
                    metadata: Mapping[str, str]) -> bool: ...

    def delete_source(self, bucket: str, name: str, generation: str) -> bool: ...

    def live_source(self, bucket: str, name: str) -> LiveObject | None: ...

    def read_source_range(self, bucket: str, name: str, generation: str, start: int, length: int) -> bytes: ...

    def server_time(self, path: str) -> float:
        """Cloud Storage's clock: write an empty object at ``path`` and return its ``updated`` time."""
        ...


def create_if_absent(store: StateStore, path: str, data: Mapping[str, Any]) -> None:
    """Create ``path`` with ``data``; nothing is written when it exists already."""
    try:
        store.create(path, data)
    except Conflict:
        pass


def create_or_replace(store: StateStore, path: str, data: Mapping[str, Any], read: Document | None) -> int:
    """Write ``data`` over what was ``read`` at ``path``: create it when nothing was, else replace that generation.

    Raises Conflict when ``path`` changed since that read (another writer created or
    rewrote it): what that means is the caller's to decide. The new generation.
    """
    if read is None:
        return store.create(path, data)
    return store.replace(path, data, read.generation)


class Source(Protocol):
    """Listing the watched buckets (the reconcile sweep)."""

    def list(self, bucket: str, prefix: str, start_offset: str | None = None) -> Iterator[SourceObject]:
        """Every object under ``prefix`` in name order, from ``start_offset`` (inclusive) on."""
        ...


def storage_client(project: str | None = None, endpoint: str | None = None) -> Any:
    """A google-cloud-storage client keeping :data:`POOL_CONNECTIONS` open.

    Anonymous on an emulator: ``endpoint`` (the DICOM gateway's setting), else
    ``STORAGE_EMULATOR_HOST``; Application Default Credentials otherwise.
    """
    from google.cloud import storage
    from requests.adapters import HTTPAdapter

    if endpoint or os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        client = storage.Client(project=project or os.environ.get("GOOGLE_CLOUD_PROJECT") or "local-project",
                                credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": endpoint} if endpoint else None)
    else:
        client = storage.Client(project=project)
    adapter = HTTPAdapter(pool_maxsize=POOL_CONNECTIONS)
    for scheme in ("https://", "http://"):
        client._http.mount(scheme, adapter)
    # google-cloud-storage 3.17 caches each bucket's project and location for OpenTelemetry span
    # attributes and, on every 404, starts a thread that GETs the bucket to check it still exists.
    # The batching protocol reads absent objects all the time (an open batch's seal, a new object's
    # claim): one bucket GET after another, beside the calls that matter. We record no spans.
    if getattr(client, "_bucket_metadata_cache", None) is not None:
        client._bucket_metadata_cache = None
    environment_read_once(client._http)
    return client


class WritePacer:
    """Spaces this process's writes of one object name by :data:`SAME_NAME_WRITE_INTERVAL`.

    Writes of the same name from other processes are not known here: those get a
    429, which the client retries with backoff.
    """

    def __init__(self, interval: float = SAME_NAME_WRITE_INTERVAL, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval, self._clock, self._sleep = interval, clock, sleep
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def before(self, path: str) -> None:
        with self._lock:
            last = self._last.get(path)
        if last is not None:
            wait = last + self.interval - self._clock()
            if wait > 0:
                self._sleep(wait)

    def after(self, path: str) -> None:
        now = self._clock()
        with self._lock:
            self._last[path] = now
            if len(self._last) > 10_000:
                for key in [key for key, at in self._last.items() if now - at >= self.interval]:
                    del self._last[key]


class GcsStateStore:
    """:class:`StateStore` over google-cloud-storage (imported on first use)."""

    def __init__(self, bucket: str, client: Any = None) -> None:
        self.bucket = bucket
        self._client = client
        self._bucket_handle: Any = None
        self._pacer = WritePacer()

    def _handle(self) -> Any:
        if self._bucket_handle is None:
            if self._client is None:
                self._client = storage_client()
            self._bucket_handle = self._client.bucket(self.bucket)
        return self._bucket_handle

    def read(self, path: str) -> Document | None:
        from google.api_core import exceptions

        blob = self._handle().blob(path)
        try:
            raw = blob.download_as_bytes()
        except exceptions.NotFound:
            return None
        return Document(json.loads(raw), int(blob.generation))

    def _write(self, path: str, data: Mapping[str, Any], generation: int) -> int:
        from google.api_core import exceptions

        blob = self._handle().blob(path)
        self._pacer.before(path)
        try:
            blob.upload_from_string(json.dumps(data, separators=(",", ":")), content_type="application/json",
                                    if_generation_match=generation)
        except exceptions.PreconditionFailed:
            raise Conflict(path) from None
        self._pacer.after(path)
        return int(blob.generation)

    def create(self, path: str, data: Mapping[str, Any]) -> int:
        return self._write(path, data, 0)

    def replace(self, path: str, data: Mapping[str, Any], generation: int) -> int:
        return self._write(path, data, generation)

    def copy_in(self, source_bucket: str, source_name: str, source_generation: str, path: str,
                metadata: Mapping[str, str]) -> None:
        """Copy one generation (retried on 429/5xx like any call: copying the same generation again is harmless).

        Raises SourceGone on 404, SourceUnreadable on any other 4xx that asking
        again cannot change (an object encrypted with a customer-supplied key, a
        disabled KMS key, no read grant) or a generation that is not ASCII digits,
        SourceCallFailed on any other error.
        """
        from google.api_core import exceptions
        from google.cloud.storage.retry import DEFAULT_RETRY

        if not (source_generation.isascii() and source_generation.isdecimal()):
            raise SourceUnreadable("its generation is not a number")
        client = self._handle().client
        source = client.bucket(source_bucket).blob(source_name, generation=int(source_generation))
        target = self._handle().blob(path)
        target.metadata = dict(metadata)
        token = None
        self._pacer.before(path)
        with naming_no_object("copy", source_name):
            try:
                while True:
                    token, _, _ = target.rewrite(source, token=token, retry=DEFAULT_RETRY)
                    if token is None:
                        break
            except exceptions.NotFound:
                raise SourceGone(f"gs://{source_bucket}/{source_name}#{source_generation}") from None
            except exceptions.GoogleAPICallError as exc:
                if exc.code is None or not 400 <= exc.code < 500 or exc.code in TRANSIENT_CLIENT_CODES:
                    raise
                raise SourceUnreadable(copy_refusal(exc.code, exc.errors)) from None
        self._pacer.after(path)

    def write_text(self, path: str, text: str) -> None:
        self._pacer.before(path)
        self._handle().blob(path).upload_from_string(text, content_type="text/plain")
        self._pacer.after(path)

    def write_marker(self, path: str, metadata: Mapping[str, str]) -> None:
        """An empty object whose custom metadata is the point (listings return it)."""
        blob = self._handle().blob(path)
        blob.metadata = dict(metadata)
        self._pacer.before(path)
        blob.upload_from_string(b"", content_type="application/octet-stream")
        self._pacer.after(path)

    def list(self, prefix: str) -> Iterator[Listed]:
        for blob in self._handle().client.list_blobs(self.bucket, prefix=prefix):
            yield Listed(blob.name, blob.metadata or {}, int(blob.size or 0), blob.md5_hash or "",
                         blob.time_created.timestamp() if blob.time_created else None)

    def read_range(self, path: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``start`` (fewer at the end of the object)."""
        return self._handle().blob(path).download_as_bytes(start=start, end=start + length - 1)

    def write_bytes(self, path: str, data: bytes, metadata: Mapping[str, str]) -> int | None:
        """Create ``path`` unless it exists; its generation, or None when it already existed."""
        from google.api_core import exceptions

        blob = self._handle().blob(path)
        blob.metadata = dict(metadata)
        try:
            blob.upload_from_string(data, content_type="application/dicom", if_generation_match=0)
        except exceptions.PreconditionFailed:
            return None
        return int(blob.generation)

    # Objects in other buckets (the inbox, a quarantine bucket): the failure policies, and the sources a
    # one-call backfill imported (naming its failures).
    def tag_source(self, bucket: str, name: str, generation: str, metadata: Mapping[str, str]) -> bool:
        """Merge ``metadata`` into that generation's custom metadata; False when the generation is gone.

        A metadata update keeps the generation (only the metageneration grows)
        and sends no finalize event, so it never starts an import.
        """
        from google.api_core import exceptions

        blob = self._handle().client.bucket(bucket).blob(name)
        blob.metadata = dict(metadata)
        with naming_no_object("metadata update", name):
            try:
                blob.patch(if_generation_match=int(generation))
            except (exceptions.PreconditionFailed, exceptions.NotFound):
                return False
        return True

    def copy_source(self, bucket: str, name: str, generation: str, to_bucket: str, to_name: str,
                    metadata: Mapping[str, str]) -> bool:
        """Copy that generation to a new object ``gs://to_bucket/to_name`` with ``metadata``; False when it is gone.

        The copy never replaces an object (``ifGenerationMatch=0``): Conflict when
        ``to_name`` exists, whether Cloud Storage says so with 412 or, to a caller
        that may create but not delete there (``roles/storage.objectCreator``), with
        403 for the missing ``storage.objects.delete``. A 404 is the source generation
        gone, unless that generation is still there: then ``to_bucket`` is missing (BucketMissing).
        """
        from google.api_core import exceptions

        client = self._handle().client
        source = client.bucket(bucket).blob(name, generation=int(generation))
        target = client.bucket(to_bucket).blob(to_name)
        target.metadata = dict(metadata)
        token = None
        with naming_no_object("quarantine copy", name, to_name):
            try:
                while True:
                    token, _, _ = target.rewrite(source, token=token, if_generation_match=0)
                    if token is None:
                        return True
            except exceptions.PreconditionFailed:
                raise Conflict(f"gs://{to_bucket}/{to_name}") from None
            except exceptions.Forbidden:
                try:
                    taken = client.bucket(to_bucket).get_blob(to_name) is not None
                except exceptions.Forbidden:
                    taken = False  # no read grant either: the copy's own refusal says what is missing
                if taken:
                    raise Conflict(f"gs://{to_bucket}/{to_name}") from None
                raise
            except exceptions.NotFound:
                if client.bucket(bucket).get_blob(name, generation=int(generation)) is None:
                    return False
                raise BucketMissing(to_bucket) from None

    def delete_source(self, bucket: str, name: str, generation: str) -> bool:
        """Delete exactly that generation (a newer one is left alone); False when it was already gone."""
        from google.api_core import exceptions

        with naming_no_object("delete", name):
            try:
                self._handle().client.bucket(bucket).blob(name).delete(if_generation_match=int(generation))
            except (exceptions.NotFound, exceptions.PreconditionFailed):
                return False
        return True

    def live_source(self, bucket: str, name: str) -> LiveObject | None:
        """The live generation of ``gs://bucket/name`` (one metadata read); None when there is none."""
        with naming_no_object("metadata read", name):
            blob = self._handle().client.bucket(bucket).get_blob(name)
        if blob is None:
            return None
        return LiveObject(str(blob.generation), int(blob.size or 0), blob.md5_hash or "", dict(blob.metadata or {}))

    def read_source_range(self, bucket: str, name: str, generation: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes of exactly that generation from ``start``; SourceGone when it is gone."""
        from google.api_core import exceptions

        blob = self._handle().client.bucket(bucket).blob(name, generation=int(generation))
        with naming_no_object("read", name):
            try:
                return blob.download_as_bytes(start=start, end=start + length - 1)
            except exceptions.NotFound:
                raise SourceGone(f"gs://{bucket}/{name}#{generation}") from None

    def server_time(self, path: str) -> float:
        blob = self._handle().blob(path)
        self._pacer.before(path)
        blob.upload_from_string(b"", content_type="application/octet-stream")
        self._pacer.after(path)
        return float(blob.updated.timestamp())

    def delete(self, path: str) -> None:
        from google.api_core import exceptions

        self._pacer.before(path)
        try:
            self._handle().blob(path).delete()
        except exceptions.NotFound:
            pass
        self._pacer.after(path)


def copy_refusal(code: int, errors: Any) -> str:
    """Why Cloud Storage refused a copy: the code and its error reason (or the status phrase), never a name."""
    return f"Cloud Storage refused to copy it: {code} {error_reason(code, errors)}"


LISTING_FIELDS = "items(name,generation,timeCreated),nextPageToken"
LISTING_PAGE = 1000


class GcsSource:
    """:class:`Source` over google-cloud-storage: names, generations and creation times only, 1,000 a page."""

    def __init__(self, client: Any = None) -> None:
        self._client = client

    def list(self, bucket: str, prefix: str, start_offset: str | None = None) -> Iterator[SourceObject]:
        if self._client is None:
            self._client = storage_client()
        with naming_no_object("listing", *(name for name in (prefix, start_offset) if name)):
            blobs = self._client.list_blobs(bucket, prefix=prefix or None, start_offset=start_offset or None,
                                            fields=LISTING_FIELDS, page_size=LISTING_PAGE)
            for blob in blobs:
                yield SourceObject(blob.name, str(blob.generation), blob.time_created.timestamp())
