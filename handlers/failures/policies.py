"""A rule's ``on_failure``: tag the failed object, or quarantine it (copy, optionally move).

Every action is idempotent, so a redelivered driver may apply it again:

* ``tag``: a metadata patch of exactly the failed generation
  (``dicom-import-error``: kind and message, ``dicom-import-batch``). A metadata
  update keeps the generation and sends no finalize event: it never starts an
  import (and were a finalize event delivered anyway, the claim of that
  generation would make it a duplicate).
* ``quarantine``: a server-side copy of the failed generation to
  ``gs://BUCKET/PREFIX/NAME`` (same relative name), the error in its metadata;
  with ``move``, then a delete of the source conditional on that generation, so
  a newer file dropped under the same name is never touched.

A generation already gone is reported, not retried; a refusal (403, a missing
bucket) is reported in the failure's ``action.error``; a transient error is
raised (RetryLater) so the delivery is retried. No error text names the object
(:func:`handlers.privacy.error_text`): results show names per the name policy.
"""

from __future__ import annotations

from typing import Any

from handlers.config import QUARANTINE, TAG, FailurePolicy
from handlers.clients.storage import StateStore
from handlers.failures.model import Failure
from handlers.privacy import error_text
from handlers.retry import RetryLater

ERROR_KEY = "dicom-import-error"
BATCH_KEY = "dicom-import-batch"
SOURCE_KEY = "dicom-import-source"
MAX_VALUE = 1024
GONE = "the failed generation is gone (deleted or overwritten) before the policy ran"


def error_metadata(failure: Failure, batch: str) -> dict[str, str]:
    return {ERROR_KEY: f"{failure.kind}: {failure.message}"[:MAX_VALUE], BATCH_KEY: batch}


def apply(store: StateStore, policy: FailurePolicy, failure: Failure, batch: str) -> dict[str, Any]:
    """Apply ``policy`` to one failed file; the ``action`` its result shows."""
    try:
        if policy.action == TAG:
            done = store.tag_source(failure.bucket, failure.name, failure.generation, error_metadata(failure, batch))
            return {"policy": TAG, "done": True} if done else {"policy": TAG, "done": False, "error": GONE}
        if policy.action == QUARANTINE:
            return _quarantine(store, policy, failure, batch)
    except Exception as exc:  # noqa: BLE001 - transient errors go up, refusals are reported
        text = error_text(exc, [failure.name, policy.prefix + failure.name])  # the object's, its copy's
        if _transient(exc):
            raise RetryLater(f"on_failure {policy.action} not applied yet: {text}") from None
        return {"policy": policy.action, "done": False, "error": text[:300]}
    raise ValueError(f"no action for on_failure {policy.action!r}")


def _quarantine(store: StateStore, policy: FailurePolicy, failure: Failure, batch: str) -> dict[str, Any]:
    to_name = policy.prefix + failure.name
    action: dict[str, Any] = {"policy": QUARANTINE, "to": f"gs://{policy.bucket}/{to_name}"}
    metadata = {**error_metadata(failure, batch),
                SOURCE_KEY: f"gs://{failure.bucket}/{failure.name}#{failure.generation}"}
    if not store.copy_source(failure.bucket, failure.name, failure.generation, policy.bucket, to_name, metadata):
        return {**action, "done": False, "error": GONE}
    if policy.move:
        store.delete_source(failure.bucket, failure.name, failure.generation)  # False: deleted by an earlier delivery
        action["moved"] = True
    return {**action, "done": True}


def _transient(exc: BaseException) -> bool:
    import requests
    from google.api_core import exceptions as google_errors

    return isinstance(exc, (requests.ConnectionError, requests.Timeout, TimeoutError, ConnectionError,
                            google_errors.TooManyRequests, google_errors.ServerError, google_errors.RetryError))
