"""A Cloud Storage stand-in for the failure policies' calls: object get, rewrite, patch and delete.

In memory, one generation per name (no versioning), in the buckets it is given.
Answers as the JSON API does, error bodies included (``error.errors[0]``:
message and reason), and honours ``ifGenerationMatch`` (a rewrite's applies to
its destination). With ``deny`` set, every request is answered 403 with a
message naming the object, as Cloud Storage's messages may. In the buckets of
``no_delete`` the caller may create but not delete (``roles/storage.objectCreator``):
a rewrite onto a taken name is answered 403 for ``storage.objects.delete`` before
its precondition is read (whether Cloud Storage orders them so is not documented).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

_REWRITE = re.compile(r"/storage/v1/b/([^/]+)/o/([^/]+)/rewriteTo/b/([^/]+)/o/([^/]+)")
_OBJECT = re.compile(r"/storage/v1/b/([^/]+)/o/([^/]+)")
NO_BUCKET = "The specified bucket does not exist."
PRECONDITION = "At least one of the pre-conditions you specified did not hold."
_PERMISSION = {"GET": "get", "PATCH": "update", "DELETE": "delete"}


@dataclass
class Stored:
    data: bytes
    generation: int
    metadata: dict[str, str] = field(default_factory=dict)


class Answer(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass
class GcsStandIn:
    buckets: set[str]
    objects: dict[tuple[str, str], Stored] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    deny: bool = False
    no_delete: set[str] = field(default_factory=set)
    _generations: Iterator[int] = field(default_factory=lambda: itertools.count(1_700_000_000_000_001))

    def add(self, bucket: str, name: str, data: bytes = b"DICM") -> str:
        """Write ``gs://bucket/name`` (a new generation replaces the live one); its generation."""
        stored = Stored(data, next(self._generations))
        self.objects[(bucket, name)] = stored
        return str(stored.generation)

    def answer(self, method: str, target: str, body: bytes) -> tuple[int, dict[str, Any] | None]:
        self.requests.append(f"{method} {target}")
        parts = urlsplit(target)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        try:
            if (found := _REWRITE.fullmatch(parts.path)) and method == "POST":
                return 200, self._rewrite(*map(unquote, found.groups()), query, json.loads(body or b"{}"))
            if (found := _OBJECT.fullmatch(parts.path)) is None:
                raise Answer(404, "notFound", "Not Found")
            bucket, name = map(unquote, found.groups())
            if self.deny:
                raise Answer(403, "forbidden", f"svc@p.iam.gserviceaccount.com does not have storage.objects."
                                               f"{_PERMISSION[method]} access to {bucket}/{name}.")
            stored = self._live(bucket, name, query.get("generation"))
            if method == "GET":
                return 200, _resource(bucket, name, stored)
            _precondition(stored, query)
            if method == "PATCH":
                stored.metadata.update(json.loads(body or b"{}").get("metadata") or {})
                return 200, _resource(bucket, name, stored)
            del self.objects[(bucket, name)]
            return 204, None
        except Answer as refused:
            return refused.status, {"error": {"code": refused.status, "message": refused.message, "errors": [
                {"message": refused.message, "domain": "global", "reason": refused.reason}]}}

    def _rewrite(self, bucket: str, name: str, to_bucket: str, to_name: str, query: dict[str, str],
                 properties: dict[str, Any]) -> dict[str, Any]:
        if self.deny:
            raise Answer(403, "forbidden", f"svc@p.iam.gserviceaccount.com does not have storage.objects.create "
                                           f"access to {to_bucket}/{to_name}.")
        source = self._live(bucket, name, query.get("sourceGeneration"))
        if to_bucket not in self.buckets:
            raise Answer(404, "notFound", NO_BUCKET)
        existing = self.objects.get((to_bucket, to_name))
        if existing is not None and to_bucket in self.no_delete:
            raise Answer(403, "forbidden", f"svc@p.iam.gserviceaccount.com does not have storage.objects.delete "
                                           f"access to {to_bucket}/{to_name}.")
        if "ifGenerationMatch" in query and str(existing.generation if existing else 0) != query["ifGenerationMatch"]:
            raise Answer(412, "conditionNotMet", PRECONDITION)
        copy = Stored(source.data, next(self._generations), dict(properties.get("metadata") or {}))
        self.objects[(to_bucket, to_name)] = copy
        size = str(len(copy.data))
        return {"kind": "storage#rewriteResponse", "totalBytesRewritten": size, "objectSize": size, "done": True,
                "resource": _resource(to_bucket, to_name, copy)}

    def _live(self, bucket: str, name: str, generation: str | None) -> Stored:
        if bucket not in self.buckets:
            raise Answer(404, "notFound", NO_BUCKET)
        stored = self.objects.get((bucket, name))
        if stored is None or (generation is not None and str(stored.generation) != generation):
            raise Answer(404, "notFound", f"No such object: {bucket}/{name}")
        return stored


def _precondition(stored: Stored, query: dict[str, str]) -> None:
    if "ifGenerationMatch" in query and str(stored.generation) != query["ifGenerationMatch"]:
        raise Answer(412, "conditionNotMet", PRECONDITION)


def _resource(bucket: str, name: str, stored: Stored) -> dict[str, Any]:
    return {"kind": "storage#object", "bucket": bucket, "name": name, "generation": str(stored.generation),
            "metageneration": "1", "size": str(len(stored.data)), "metadata": stored.metadata}


@contextmanager
def gcs_stand_in(*buckets: str) -> Iterator[tuple[GcsStandIn, str]]:
    """A running stand-in holding ``buckets`` (empty) and its ``http://127.0.0.1:PORT``."""
    gcs = GcsStandIn(set(buckets))

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, document = gcs.answer(self.command, self.path, body)
            data = json.dumps(document).encode() if document is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve  # noqa: N815 (http.server's naming)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield gcs, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
