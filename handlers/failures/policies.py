"""A rule's ``on_failure``: tag the failed object, or quarantine it (copy, optionally move).

Every action is idempotent, so a redelivered driver may apply it again:

* ``tag``: a metadata patch of exactly the failed generation
  (``dicom-import-error``: kind and message, ``dicom-import-batch``). A metadata
  update keeps the generation and sends no finalize event: it never starts an
  import (and were a finalize event delivered anyway, the claim of that
  generation would make it a duplicate).
* ``quarantine``: a server-side copy of the failed generation to
  ``gs://BUCKET/PREFIX/NAME`` (same relative name), the error and
  ``dicom-import-source`` (``gs://BUCKET/NAME#GENERATION``) in its metadata.
  A copy never replaces an object: when that name holds the copy of another
  generation (the same name failed before), the copy goes to
  ``PREFIX/NAME`` with ``.gGENERATION`` before its extension
  (``failed/x.dcm`` -> ``failed/x.g200.dcm``); a name holding this
  generation's copy already is a redelivery, done. With ``move``, then a delete
  of the source conditional on that generation, so a newer file dropped under
  the same name is never touched; never before its copy is there.

A generation already gone is reported, not retried; a refusal (403, a missing
bucket) is reported in the failure's ``action.error``; a transient error is
raised (RetryLater) so the delivery is retried. A move whose delete is refused
after the copy was made says so: ``to`` and ``done`` (the copy), ``moved:
false`` and the error. No error text names the object
(:func:`handlers.privacy.error_text`): results show names per the name policy.
"""

from __future__ import annotations

import posixpath
from typing import Any

from handlers.config import QUARANTINE, TAG, FailurePolicy
from handlers.clients.storage import BucketMissing, Conflict, StateStore
from handlers.failures.model import Failure
from handlers.privacy import error_text
from handlers.retry import RetryLater, transient

ERROR_KEY = "dicom-import-error"
BATCH_KEY = "dicom-import-batch"
SOURCE_KEY = "dicom-import-source"
MAX_VALUE = 1024
MAX_ERROR = 300
GONE = "the failed generation is gone (deleted or overwritten) before the policy ran"
TAKEN = ("both quarantine names hold copies of other objects (never overwritten): nothing copied, "
         "the failed file stays where it is")


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
        text = _error_text(exc, policy, failure)
        if transient(exc):
            raise RetryLater(f"on_failure {policy.action} not applied yet: {text}") from None
        return {"policy": policy.action, "done": False, "error": text[:MAX_ERROR]}
    raise ValueError(f"no action for on_failure {policy.action!r}")


def _error_text(exc: BaseException, policy: FailurePolicy, failure: Failure) -> str:
    return error_text(exc, [failure.name, *quarantine_names(policy, failure)])


def quarantine_names(policy: FailurePolicy, failure: Failure) -> list[str]:
    """Where a quarantine copy may go, in order: the same relative name, then with its generation."""
    if policy.action != QUARANTINE:
        return []
    return [policy.prefix + failure.name, policy.prefix + generation_name(failure.name, failure.generation)]


def generation_name(name: str, generation: str) -> str:
    """``name`` with ``.gGENERATION`` before its extension: ``dir/x.dcm`` -> ``dir/x.g200.dcm``."""
    stem, extension = posixpath.splitext(name)
    return f"{stem}.g{generation}{extension}"


def _quarantine(store: StateStore, policy: FailurePolicy, failure: Failure, batch: str) -> dict[str, Any]:
    metadata = {**error_metadata(failure, batch), SOURCE_KEY: _source(failure)}
    names = quarantine_names(policy, failure)
    for to_name in names:
        action = _to(policy, to_name)
        try:
            if not store.copy_source(failure.bucket, failure.name, failure.generation, policy.bucket, to_name,
                                     metadata):
                return _gone(store, policy, failure)
        except BucketMissing as exc:
            return {**action, "done": False, "error": _bucket_missing(exc.bucket)}
        except Conflict:
            if not _holds_copy(store, policy, to_name, failure):
                continue  # another generation's copy: never overwritten
        return _then_move(store, policy, failure, action)
    return {**_to(policy, names[-1]), "done": False, "error": TAKEN}


def _gone(store: StateStore, policy: FailurePolicy, failure: Failure) -> dict[str, Any]:
    """The failed generation is gone: quarantined by an earlier delivery when a quarantine name holds its copy."""
    for to_name in quarantine_names(policy, failure):
        if _holds_copy(store, policy, to_name, failure):
            return {**_to(policy, to_name), **({"moved": True} if policy.move else {}), "done": True}
    return {**_to(policy, policy.prefix + failure.name), "done": False, "error": GONE}


def _then_move(store: StateStore, policy: FailurePolicy, failure: Failure, action: dict[str, Any]) -> dict[str, Any]:
    """With ``move``, delete the failed generation: its copy is there (a refused delete leaves both)."""
    if policy.move:
        try:
            store.delete_source(failure.bucket, failure.name, failure.generation)  # False: an earlier delivery's
        except Exception as exc:  # noqa: BLE001 - transient errors go up (apply retries), refusals are reported
            if transient(exc):
                raise
            return {**action, "done": True, "moved": False, "error": _error_text(exc, policy, failure)[:MAX_ERROR]}
        action = {**action, "moved": True}
    return {**action, "done": True}


def _holds_copy(store: StateStore, policy: FailurePolicy, to_name: str, failure: Failure) -> bool:
    """Whether ``to_name`` in the quarantine bucket is the copy of exactly this failed generation."""
    copy = store.live_source(policy.bucket, to_name)
    return copy is not None and copy.metadata.get(SOURCE_KEY) == _source(failure)


def _source(failure: Failure) -> str:
    return f"gs://{failure.bucket}/{failure.name}#{failure.generation}"


def _to(policy: FailurePolicy, to_name: str) -> dict[str, Any]:
    return {"policy": QUARANTINE, "to": f"gs://{policy.bucket}/{to_name}"}


def _bucket_missing(bucket: str) -> str:
    return (f"the quarantine bucket gs://{bucket} does not exist: create it, or correct the rule's "
            "on_failure quarantine URI in the config")

