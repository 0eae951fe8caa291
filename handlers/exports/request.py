"""Export requests: every part validated before any call.

UIDs, the destination, the MIME type and filter-file lines are checked by
:meth:`ExportRequest.build`; :func:`check_paths_exist` then refuses paths that
name nothing in the store (one QIDO search each). The CLI and the Pub/Sub entry
point build requests the same way.

Where data may go is config.yaml's, not the requester's: a request names a
configured store (:func:`resolve_store`) and a destination inside
``exports.destinations`` (:func:`check_destination`). The export is written by
the Cloud Healthcare service agent, which a bucket in any project can grant
access to; without these checks whoever may publish an export request could
copy the store anywhere (docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Mapping, Sequence

from handlers.clients.healthcare import ApiError, HealthcareApi
from handlers.exports.paths import ExportRequestError, resource_path
from handlers.exports.query import Query
from handlers.retry import Deadline, RetryLater
from handlers.wildcard import WILDCARD_CHARS, WildcardError, split_gcs_uri

DEFAULT_MIME_TYPE = "application/dicom; transfer-syntax=*"
_PATH_RE = re.compile(r"/studies/([^/]+)(?:/series/([^/]+)(?:/instances/([^/]+))?)?")
_MIME_RE = re.compile(
    r"(application/dicom|application/octet-stream)(; ?transfer-syntax=(\*|[0-9]+(\.[0-9]+)*))?"
    r"|image/jpeg(; ?transfer-syntax=1\.2\.840\.10008\.1\.2\.4\.50)?"
    r"|image/png"
)
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Filter paths checked for existence (one QIDO search each) before an export starts.
MAX_CHECKED_PATHS = 100


#: The config rules a request can be refused by (named in the REJECTED result's ``error.rule``).
DESTINATIONS_RULE = "exports.destinations"
STORES_RULE = "stores"


def parse_filter_lines(text: str, source: str) -> list[str]:
    """Filter-file lines (``\\n`` or ``\\r\\n``, blanks ignored), each checked; errors name ``source:LINE``."""
    paths = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        found = _PATH_RE.fullmatch(line)
        if found is None:
            raise ExportRequestError(
                f"{source}:{number}: {line!r} is not /studies/STUDY_UID[/series/SERIES_UID[/instances/INSTANCE_UID]]")
        try:
            paths.append(resource_path(*[part for part in found.groups() if part is not None]))
        except ExportRequestError as exc:
            raise ExportRequestError(f"{source}:{number}: {exc}") from None
    return paths


@dataclass(frozen=True)
class ExportRequest:
    store: str
    destination: str
    paths: tuple[str, ...] = ()
    mime_type: str = DEFAULT_MIME_TYPE
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: Export what this QIDO-RS search finds (the job searches, then writes the filter file).
    query: Query | None = None

    @classmethod
    def build(cls, *, store: str, destination: str, studies: Iterable[str] = (), series: Iterable[str] = (),
              instances: Iterable[str] = (), filter_lines: Iterable[str] = (), mime_type: str | None = None,
              request_id: str | None = None, query: Query | None = None) -> "ExportRequest":
        """Validate every part; ``series`` are ``STUDY/SERIES``, ``instances`` ``STUDY/SERIES/INSTANCE``."""
        paths = [resource_path(uid) for uid in studies]
        paths += [resource_path(*_split(item, 2, "--series", "STUDY_UID/SERIES_UID")) for item in series]
        paths += [resource_path(*_split(item, 3, "--instance", "STUDY_UID/SERIES_UID/INSTANCE_UID")) for item in instances]
        paths += list(filter_lines)
        if query is not None and paths:
            raise ExportRequestError("a query selects the UIDs itself: give either a query or studies, series, "
                                     "instances and filter lines, not both")
        _check_destination(destination)
        mime = mime_type or DEFAULT_MIME_TYPE
        if not _MIME_RE.fullmatch(mime):
            raise ExportRequestError(
                f"MIME type {mime!r} is not one the API exports: use {DEFAULT_MIME_TYPE!r}, "
                "'application/dicom; transfer-syntax=1.2.840.10008.1.2.1', 'application/octet-stream; transfer-syntax=*', "
                "'image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50' or 'image/png'")
        rid = request_id or uuid.uuid4().hex
        if not REQUEST_ID_RE.fullmatch(rid):
            raise ExportRequestError(f"requestId {rid!r} must be 1-128 letters, digits, '.', '_' or '-'")
        return cls(store, destination, tuple(dict.fromkeys(paths)), mime, rid, query)

    @cached_property
    def fingerprint(self) -> str:
        """A digest of what is exported, from where, to where and how: equal for the same request in any order.

        Kept in the export's record, so a ``requestId`` reused with other arguments is refused instead of
        answered with the other export's result. Computed once (it sorts and hashes every path): the record,
        :func:`check_same_request` and the request's file names (:attr:`tag`) all read it.
        """
        query = [self.query.level, sorted(self.query.params)] if self.query else None
        defining = {"store": self.store, "destination": self.destination.rstrip("/"), "mimeType": self.mime_type,
                    "paths": sorted(self.paths), "query": query}
        return hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()

    @property
    def tag(self) -> str:
        """The fingerprint's first 16 hex digits: names this request's own files beside its id's record."""
        return self.fingerprint[:16]

    @property
    def filtered(self) -> bool:
        """Whether a filter file selects what is exported (paths, or a query's matches)."""
        return bool(self.paths) or self.query is not None


def filter_text(paths: Iterable[str]) -> str:
    """A filter file: one resource path a line."""
    return "".join(f"{path}\n" for path in paths)


def count_levels(paths: Iterable[str]) -> dict[str, int]:
    """How many of ``paths`` name studies, series and instances."""
    counts = {"studies": 0, "series": 0, "instances": 0}
    for path in paths:
        depth = path.count("/") // 2
        counts[("studies", "series", "instances")[depth - 1]] += 1
    return counts


def check_paths_exist(api: HealthcareApi, request: ExportRequest, deadline: Deadline) -> None:
    """Refuse a request whose paths (the first :data:`MAX_CHECKED_PATHS`) name nothing in the store.

    One QIDO search per path. Raises :class:`ExportRequestError` listing the missing
    paths, or RetryLater when the API cannot answer yet.
    """
    missing = []
    for path in request.paths[:MAX_CHECKED_PATHS]:
        study, series, instance = _PATH_RE.fullmatch(path).groups()  # type: ignore[union-attr]
        if instance is not None:
            resource, key, uid = f"studies/{study}/series/{series}/instances", "SOPInstanceUID", instance
        elif series is not None:
            resource, key, uid = f"studies/{study}/series", "SeriesInstanceUID", series
        else:
            resource, key, uid = "studies", "StudyInstanceUID", study
        try:
            found = api.search_dicom(request.store, resource, {key: uid, "limit": "1"}, deadline)
        except ApiError as exc:
            if exc.retryable:
                raise RetryLater(f"cannot search {request.store} for the filter paths yet: {exc}") from None
            raise ExportRequestError(f"cannot search DICOM store {request.store} for the filter paths: {exc}") from None
        if not found:
            missing.append(path)
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ExportRequestError(f"not in DICOM store {request.store}: {shown}: check the UIDs (a QIDO search found nothing)")


def _split(item: str, parts: int, flag: str, form: str) -> list[str]:
    pieces = item.split("/") if isinstance(item, str) else []
    if len(pieces) != parts:
        raise ExportRequestError(f"{flag} {item!r} must be {form}")
    return pieces


def _check_destination(destination: str) -> None:
    try:
        bucket, path = split_gcs_uri(destination if "/" in destination[5:] else destination + "/")
    except WildcardError as exc:
        raise ExportRequestError(f"destination: {exc}") from None
    if any(char in WILDCARD_CHARS for char in path):
        raise ExportRequestError(f"destination {destination!r} has a wildcard: give a folder such as gs://{bucket}/exports")


def request_from_message(body: Any, stores: Mapping[str, str], default_id: str,
                         config_path: str = "config.yaml") -> ExportRequest:
    """An export request from a Pub/Sub message body (same options as the CLI); ``config_path`` as refusals name it."""
    if not isinstance(body, dict):
        raise ExportRequestError("the export request must be a JSON object with 'store' and 'destination'")
    known = {"store", "destination", "studies", "series", "instances", "filterLines", "query", "queryLevel",
             "mimeType", "requestId"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ExportRequestError(f"unknown field(s) {', '.join(unknown)}: known fields are {', '.join(sorted(known))}")
    for key in ("store", "destination"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise ExportRequestError(f"'{key}' is required and must be a string")
    lists = {}
    for key in ("studies", "series", "instances", "filterLines"):
        value = body.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ExportRequestError(f"'{key}' must be a list of strings")
        lists[key] = value
    for key in ("requestId", "mimeType"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise ExportRequestError(f"'{key}' must be a string")
    filter_lines = parse_filter_lines("\n".join(lists["filterLines"]), "filterLines")
    query = None
    if "query" in body or "queryLevel" in body:
        query = Query.parse(body.get("query"), body.get("queryLevel", "study"))
    return ExportRequest.build(
        store=resolve_store(body["store"], stores, config_path), destination=body["destination"], studies=lists["studies"],
        series=lists["series"], instances=lists["instances"], filter_lines=filter_lines,
        mime_type=body.get("mimeType"), request_id=body.get("requestId") or default_id, query=query)


@dataclass(frozen=True)
class RefusedMessage:
    """A Pub/Sub export request that was refused, to tell its id's export's own redelivery from another request.

    ``data``: the message's bytes; ``stores``: config.yaml's, as it refused them.
    """

    data: bytes
    stores: Mapping[str, str]

    def _request(self, stores: Mapping[str, str]) -> ExportRequest | None:
        try:
            body = json.loads(self.data or b"null")
            return request_from_message(body, stores, "refused")
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ExportRequestError):
            return None

    @property
    def tag(self) -> str:
        """Its request's :attr:`ExportRequest.tag` when it is well-formed, else 16 hex digits of a digest of its bytes."""
        request = self._request(self.stores)
        return request.tag if request else hashlib.sha256(self.data or b"").hexdigest()[:16]

    def asks_for(self, recorded: Mapping[str, Any]) -> bool:
        """Whether it asks for the export ``recorded`` (same fingerprint): that export's own message, redelivered
        after config.yaml stopped allowing its destination or store. A store alias no longer in ``stores`` is read
        as the recorded store; a malformed message asks for no export. A record without a fingerprint (a refusal, or
        an export started by an earlier version) is taken as asked for, as before fingerprints.
        """
        if recorded.get("fingerprint") is None:
            return True
        stores = self.stores
        try:
            named = json.loads(self.data or b"null").get("store")
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, AttributeError):
            return False
        if isinstance(named, str) and named not in stores and named not in stores.values():
            stores = {named: named if "/" in named else str(recorded.get("store"))}  # a full name means itself
        request = self._request(stores)
        return request is not None and request.fingerprint == recorded["fingerprint"]


def resolve_store(store: str, stores: Mapping[str, str], config_path: str = "config.yaml") -> str:
    """The full name of a configured store, named by its alias (or by that full name); any other is refused."""
    if store in stores:
        return stores[store]
    if store in stores.values():
        return store
    known = ", ".join(f"{alias} ({name})" for alias, name in sorted(stores.items())) or "none"
    raise ExportRequestError(f"store {store!r} is not one of the stores in {config_path} (known: {known}): name a "
                             "configured store's alias, or add the store to 'stores' and redeploy", STORES_RULE)


def check_destination(destination: str, allowed: Sequence[str], config_path: str = "config.yaml") -> str:
    """The ``exports.destinations`` folder that holds ``destination``; ExportRequestError if none does.

    ``gs://B/P`` is inside ``gs://B/P/`` and below it, never in a sibling such as ``gs://B/P-other/``.
    """
    folder = destination if destination.endswith("/") else destination + "/"
    segments = folder.removeprefix("gs://").split("/")[1:-1]
    if any(segment in ("", ".", "..") for segment in segments):
        raise ExportRequestError(f"destination {destination!r} has an empty, '.' or '..' folder: write the folder "
                                 "plainly", DESTINATIONS_RULE)
    for prefix in allowed:
        if folder.startswith(prefix):
            return prefix
    where = ", ".join(allowed) if allowed else "none: every export is refused"
    raise ExportRequestError(
        f"destination {destination} is outside {DESTINATIONS_RULE} ({where}): export into one of those folders, or "
        f"add the folder to {DESTINATIONS_RULE} in {config_path} and redeploy", DESTINATIONS_RULE)
