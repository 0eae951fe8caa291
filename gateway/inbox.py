"""Writing one instance to the inbox bucket, once: an identical re-send never makes a second upload.

``put`` creates the object only if it does not exist (``ifGenerationMatch=0``).
If it exists, its MD5 is compared with ours: equal means the instance is already
there (nothing is written, no new generation, so no second import); different
means the sender changed it, and it is replaced under a precondition on the
generation just read (a new generation, which the function's ``on_conflict``
handles), unless the object is a version received later than ours (its
``dicom-gateway-received`` metadata, written with every upload): then ours is
stale and nothing is written, so an older version left in the spool can never
replace a newer one, whatever the order of uploads or restarts. One request
for a new instance, two for a re-send.

Except an object received in the future (past ``FUTURE_TOLERANCE`` ahead of
this host's clock): a clock stepped back since it was stamped (NTP, a VM
resumed) would make every newer version stale, and lose it. Ours, the newest
the gateway acknowledged, replaces it, with a WARNING to fix the clock.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any, Callable, Mapping, Protocol

from handlers import log
from handlers.clients.storage import storage_client

__all__ = ["CREATED", "FUTURE_TOLERANCE", "IDENTICAL", "REPLACED", "STALE", "GcsInbox", "Inbox", "RECEIVED", "md5_of",
           "verdict"]

CREATED = "created"
IDENTICAL = "identical"
REPLACED = "replaced"
STALE = "stale"
CONTENT_TYPE = "application/dicom"
#: Custom metadata of each uploaded object: when the gateway received that version (epoch seconds).
RECEIVED = "dicom-gateway-received"
#: Seconds an object's ``RECEIVED`` may be ahead of this host's clock before it is taken for a clock stepped back.
FUTURE_TOLERANCE = 1.0


class Inbox(Protocol):
    def put(self, name: str, data: bytes, received: float) -> str:
        """Write ``data`` (received at ``received``) as object ``name``; return CREATED, IDENTICAL, REPLACED or STALE."""


def md5_of(data: bytes) -> str:
    """Base64 MD5, as Cloud Storage reports ``md5Hash``."""
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def verdict(existing_md5: str | None, existing_metadata: Mapping[str, str] | None, md5: str,
            received: float, now: float) -> str | None:
    """What an upload does about the live object: IDENTICAL or STALE (write nothing), or None (replace it).

    An object without a readable ``RECEIVED`` (not written by the gateway) is replaced when it differs;
    so is one received in the future of ``now`` (this host's clock), with a WARNING.
    """
    if existing_md5 == md5:
        return IDENTICAL
    try:
        theirs = float((existing_metadata or {})[RECEIVED])
    except (KeyError, TypeError, ValueError):
        return None
    if theirs <= received:
        return None
    if theirs > now + FUTURE_TOLERANCE:
        log.warning("object received in the future: clock stepped back?", received=received, objectReceived=theirs,
                    aheadSeconds=round(theirs - now, 3))
        return None
    return STALE


class GcsInbox:
    """The destination bucket through google-cloud-storage.

    ``endpoint`` (default ``$STORAGE_EMULATOR_HOST``) points it at an emulator,
    with anonymous credentials; without one it uses Application Default
    Credentials. One instance per uploader thread: HTTP sessions are not shared.
    The client is the function's (``storage_client``): no background bucket
    lookups, the environment read once. ``clock`` tells objects received in the future.
    """

    def __init__(self, bucket: str, *, endpoint: str | None = None, project: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._bucket = storage_client(project, endpoint).bucket(bucket)
        self._clock = clock

    def put(self, name: str, data: bytes, received: float) -> str:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        md5 = md5_of(data)
        generation = 0  # 0: only if no live object has this name
        while True:
            blob = self._bucket.blob(name)
            blob.md5_hash = md5  # Cloud Storage rejects the upload if the bytes arrive damaged
            blob.metadata = {RECEIVED: repr(received)}
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
                continue
            outcome = verdict(existing.md5_hash, existing.metadata, md5, received, self._clock())
            if outcome is not None:
                return outcome
            generation = existing.generation
