"""Writing one instance to the inbox bucket, once: an identical re-send never makes a second upload.

``put`` creates the object only if it does not exist (``ifGenerationMatch=0``).
If it exists, its MD5 is compared with ours: equal means the instance is already
there (nothing is written, no new generation, so no second import); different
means the sender changed it, and it is replaced under a precondition on the
generation just read (a new generation, which the function's ``on_conflict``
handles). One request for a new instance, two for a re-send.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Protocol

from handlers.clients.storage import storage_client

__all__ = ["CREATED", "IDENTICAL", "REPLACED", "GcsInbox", "Inbox"]

CREATED = "created"
IDENTICAL = "identical"
REPLACED = "replaced"
CONTENT_TYPE = "application/dicom"


class Inbox(Protocol):
    def put(self, name: str, data: bytes) -> str:
        """Write ``data`` as object ``name``; return CREATED, IDENTICAL or REPLACED."""


class GcsInbox:
    """The destination bucket through google-cloud-storage.

    ``endpoint`` (default ``$STORAGE_EMULATOR_HOST``) points it at an emulator,
    with anonymous credentials; without one it uses Application Default
    Credentials. One instance per uploader thread: HTTP sessions are not shared.
    The client is the function's (``storage_client``): no background bucket
    lookups, the environment read once.
    """

    def __init__(self, bucket: str, *, endpoint: str | None = None, project: str | None = None) -> None:
        self._bucket = storage_client(project, endpoint).bucket(bucket)

    def put(self, name: str, data: bytes) -> str:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # as Cloud Storage reports md5Hash
        generation = 0  # 0: only if no live object has this name
        while True:
            blob = self._bucket.blob(name)
            blob.md5_hash = md5  # Cloud Storage rejects the upload if the bytes arrive damaged
            try:
                blob.upload_from_string(data, content_type=CONTENT_TYPE, if_generation_match=generation, retry=None)
                return CREATED if generation == 0 else REPLACED
            except PreconditionFailed:
                pass
            try:
                existing: Any = self._bucket.get_blob(name, retry=None)
            except NotFound:
                existing = None
            if existing is None:
                generation = 0  # deleted in between: create again
            elif existing.md5_hash == md5:
                return IDENTICAL
            else:
                generation = existing.generation
