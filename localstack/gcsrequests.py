"""What a Cloud Storage JSON API request is: its method id and, for a mutation, the object it writes.

Used by the fault-injecting proxy (:mod:`localstack.gcsproxy`) to apply faults per
method (the ids are the discovery document's: ``objects.get``, ``objects.insert``...)
and the one-write-per-second limit per object name. Pure functions of the request
line, headers and body; nothing here does I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["Classified", "classify", "multipart_metadata_name"]

_BUCKET = r"(?P<bucket>[^/]+)"
_OBJECT = r"(?P<object>.+)"
# (HTTP method, path pattern, method id); the first match wins.
_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (verb, re.compile(pattern), method)
    for verb, pattern, method in (
        ("GET", r"/storage/v1/b", "buckets.list"),
        ("POST", r"/storage/v1/b", "buckets.insert"),
        ("GET", rf"/storage/v1/b/{_BUCKET}", "buckets.get"),
        ("DELETE", rf"/storage/v1/b/{_BUCKET}", "buckets.delete"),
        ("PATCH", rf"/storage/v1/b/{_BUCKET}", "buckets.patch"),
        ("GET", rf"/storage/v1/b/{_BUCKET}/o", "objects.list"),
        ("POST", rf"/storage/v1/b/{_BUCKET}/o/(?P<source>.+)/rewriteTo/b/(?P<dbucket>[^/]+)/o/(?P<dobject>.+)",
         "objects.rewrite"),
        ("POST", rf"/storage/v1/b/{_BUCKET}/o/(?P<source>.+)/copyTo/b/(?P<dbucket>[^/]+)/o/(?P<dobject>.+)",
         "objects.copy"),
        ("POST", r"/storage/v1/b/(?P<dbucket>[^/]+)/o/(?P<dobject>.+)/compose", "objects.compose"),
        ("GET", rf"/storage/v1/b/{_BUCKET}/o/{_OBJECT}", "objects.get"),
        ("GET", rf"/download/storage/v1/b/{_BUCKET}/o/{_OBJECT}", "objects.get"),
        ("PATCH", rf"/storage/v1/b/{_BUCKET}/o/{_OBJECT}", "objects.patch"),
        ("PUT", rf"/storage/v1/b/{_BUCKET}/o/{_OBJECT}", "objects.update"),
        ("DELETE", rf"/storage/v1/b/{_BUCKET}/o/{_OBJECT}", "objects.delete"),
        ("POST", rf"/upload/storage/v1/b/{_BUCKET}/o", "objects.insert"),
        ("PUT", rf"/upload/storage/v1/b/{_BUCKET}/o", "objects.insert"),
        ("PUT", r"/upload/resumable/(?P<upload>[^/]+)", "objects.insert"),
        ("POST", r"/batch/storage/v1", "batch"),
    )
)
MUTATIONS = frozenset({"objects.insert", "objects.rewrite", "objects.copy", "objects.compose", "objects.patch",
                       "objects.update", "objects.delete"})


@dataclass(frozen=True)
class Classified:
    """A request's method id and, for a mutation whose target is known, ``(bucket, object name)``."""

    method: str
    target: tuple[str, str] | None = None
    upload_id: str | None = None
    """The resumable session a request starts (its Location) or continues."""


def classify(verb: str, raw_path: str, content_type: str, body: bytes) -> Classified:
    """The method id of ``verb raw_path`` (``other`` when unknown) and the object a mutation writes.

    The object of an upload is in the ``name`` query parameter, or in the JSON
    metadata of a multipart or resumable-session body; a resumable upload's
    later requests name only their session (``upload_id``).
    """
    parts = urlsplit(raw_path)
    path, query = parts.path, parse_qs(parts.query)
    for route_verb, pattern, method in _ROUTES:
        if route_verb != verb:
            continue
        found = pattern.fullmatch(path)
        if found is None:
            continue
        groups = {key: unquote(value) for key, value in found.groupdict().items() if value is not None}
        upload_id = (query.get("upload_id") or [groups.get("upload", "")])[0] or None
        if method not in MUTATIONS:
            return Classified(method)
        if "dobject" in groups:
            return Classified(method, (groups["dbucket"], groups["dobject"]))
        if method != "objects.insert":
            return Classified(method, (groups["bucket"], groups["object"]))
        name = (query.get("name") or [None])[0] or _name_in_body(content_type, body)
        bucket = groups.get("bucket")
        return Classified(method, (bucket, name) if bucket and name else None, upload_id)
    return Classified("other")


def _name_in_body(content_type: str, body: bytes) -> str | None:
    if content_type.startswith("multipart/"):
        return multipart_metadata_name(content_type, body)
    if content_type.startswith("application/json") and body:
        try:
            metadata = json.loads(body)
        except ValueError:
            return None
        name = metadata.get("name") if isinstance(metadata, dict) else None
        return name if isinstance(name, str) else None
    return None


def multipart_metadata_name(content_type: str, body: bytes) -> str | None:
    """``name`` in the JSON metadata of a multipart upload (``multipart/related``): its first part.

    Only the first part is read (the metadata comes first; the object's data,
    which may be large, is never parsed).
    """
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if found is None:
        return None
    delimiter = b"--" + found.group(1).encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        return None
    end = body.find(delimiter, start + len(delimiter))
    part = body[start + len(delimiter): end if end >= 0 else len(body)]
    _, separator, payload = part.partition(b"\r\n\r\n")
    if not separator:
        return None
    try:
        metadata = json.loads(payload)
    except ValueError:
        return None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None
