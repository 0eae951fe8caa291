"""Result messages (``dicom-import-result/v1``), published once per import operation.

The JSON Schema is ``schemas/dicom-import-result.v1.json``; attributes carry
what subscribers filter on (``outcome``, ``failureCount``, ``conflictCount``,
``store``, ``rule``). Failed files are named in ``failures`` (the first 100;
``failuresManifest`` has them all beyond that), skipped ones in ``skipped`` (the
first 100 of ``skippedCount``; the batch record, ``manifest``, has them all),
every name through the config's name policy.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from handlers.clients.healthcare import Operation
from handlers.failures.kinds import CONFLICT
from handlers.failures.model import Failure
from handlers.privacy import NamePolicy

IMPORT_SCHEMA = "dicom-import-result/v1"
SUCCEEDED, PARTIAL, FAILED, REJECTED, UNKNOWN = "SUCCEEDED", "PARTIAL", "FAILED", "REJECTED", "UNKNOWN"
# Above this many objects the message links the batch manifest instead of listing names.
MAX_LISTED_OBJECTS = 100
# Above this many failures the message lists the first ones and links the NDJSON failures manifest.
MAX_LISTED_FAILURES = 100
# Above this many skipped objects the message lists the first ones; the batch record (``manifest``) has them all.
MAX_LISTED_SKIPPED = 100
CANCELLED = 1
PERMISSION_DENIED = 7

SERVICE_AGENT_HINT = (
    "grant roles/storage.objectViewer on the bucket holding the files (on the state bucket {bucket}, which holds the "
    "staging copies, run deploy.sh again: it grants the read on staging/ and exports/ only) to the Cloud Healthcare "
    "Service Agent service-PROJECT_NUMBER@gcp-sa-healthcare.iam.gserviceaccount.com, "
    "and the store's import permission to the function's service account (deploy.sh's custom role "
    "dicomImportStore, or roles/healthcare.dicomEditor)"
)


def rfc3339(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def outcome_of(operation: Operation) -> str:
    """Classify a finished import: a partly failed one may end with ``error`` or ``response``."""
    error_code = (operation.error or {}).get("code")
    if error_code == CANCELLED:
        return FAILED
    if operation.failure == 0 and operation.error is None:
        return SUCCEEDED
    if operation.success > 0:
        return PARTIAL
    return FAILED


def rejection_hint(code: int, store: str, bucket: str) -> str:
    """What usually causes an import call to be refused outright, and the fix."""
    if code in (401, 403):
        return SERVICE_AGENT_HINT.format(bucket=f"gs://{bucket}")
    if code == 404:
        return f"the DICOM store {store} does not exist or is not visible to the function: check 'stores' in config.yaml"
    if code == 400:
        return "the API refused the request: check the rule's pattern and the store name in config.yaml"
    return "see the error message; the request was not retried because it cannot succeed as is"


def operation_hint(outcome: str, operation: Operation | None, bucket: str, named_all: bool = False) -> str | None:
    if operation is None:
        return None
    if (operation.error or {}).get("code") == PERMISSION_DENIED:
        return SERVICE_AGENT_HINT.format(bucket=f"gs://{bucket}")
    if outcome in (PARTIAL, FAILED):
        if named_all and operation.failure:
            return "each failed file is named in failures with the API's reason"
        if operation.failure:
            return "failuresIncomplete says which failed files are not named; Cloud Logging has the rest: open logsUrl"
        return "per-file errors are in Cloud Logging: open logsUrl"
    return None


def unknown_hint(batch: str) -> str:
    """What to do with a batch whose import's outcome is unknown (none of its files is known to be stored)."""
    return (f"no file of this batch is known to be stored: check its operation (operationName), then "
            f"`python -m handlers retry {batch}` re-imports them (files already stored are unchanged)")


def import_message(
    record: Mapping[str, Any],
    *,
    outcome: str,
    names: NamePolicy,
    manifest_uri: str,
    operation: Operation | None = None,
    error: Mapping[str, Any] | None = None,
    hint: str | None = None,
    concluded_at: float,
    failures: Sequence[Failure] = (),
    failures_incomplete: str | None = None,
    failures_manifest: str | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The message data and attributes for one finished (or rejected, or abandoned) batch.

    ``failures_manifest`` is the NDJSON file the publisher writes when there are
    more than :data:`MAX_LISTED_FAILURES` failures (ignored otherwise).
    """
    members = record.get("members") or []
    objects = None
    if len(members) <= MAX_LISTED_OBJECTS:
        objects = [{"uri": names.uri(m["bucket"], m["name"]), "generation": m["generation"]} for m in members]
    all_skipped = record.get("skipped") or []
    skipped = [{"uri": names.uri(m["bucket"], m["name"]), "generation": m["generation"], "reason": m["reason"]}
               for m in all_skipped[:MAX_LISTED_SKIPPED]]
    success = operation.success if operation else 0
    failure = operation.failure if operation else 0
    if operation is None and outcome == REJECTED:
        failure = len(members)
        failures_incomplete = "the import call was refused: no file was read, so no file has an error of its own"
    elif failure > len(failures) and not failures_incomplete:
        failures_incomplete = f"{failure - len(failures)} of {failure} failures not named"
    opened, sealed, started = record.get("openedAt"), record.get("sealedAt"), record.get("importStartedAt")
    data: dict[str, Any] = {
        "schema": IMPORT_SCHEMA,
        "outcome": outcome,
        "rule": record["rule"],
        "store": record["store"],
        "batch": record["batch"],
        "importUri": record.get("importUri"),
        "operation": operation.name if operation else record.get("operation"),
        "counter": {"success": success, "failure": failure},
        "objectCount": len(members),
        "objects": objects,
        "skipped": skipped,
        "skippedCount": len(all_skipped),
        "manifest": manifest_uri,
        "objectNames": names.mode,
        "error": dict(error or (operation.error if operation and operation.error else {})) or None,
        "hint": hint,
        "logsUrl": operation.logs_url if operation and operation.logs_url else None,
        "failures": [item.shown(names) for item in failures[:MAX_LISTED_FAILURES]],
        "failuresListed": len(failures),
        "failuresIncomplete": failures_incomplete,
        "failuresManifest": failures_manifest if len(failures) > MAX_LISTED_FAILURES else None,
        "replaces": record.get("replaces"),
        "retryOf": record.get("retryOf"),
        "timings": {
            "openedAt": rfc3339(opened),
            "sealedAt": rfc3339(sealed),
            "importStartedAt": rfc3339(started),
            "operationCreateTime": operation.create_time or None if operation else None,
            "operationEndTime": operation.end_time or None if operation else None,
            "concludedAt": rfc3339(concluded_at),
            "waitSeconds": round(sealed - opened, 3) if opened and sealed else None,
            "totalSeconds": round(concluded_at - opened, 3) if opened else None,
        },
    }
    attributes = {
        "schema": IMPORT_SCHEMA,
        "outcome": outcome,
        "failureCount": str(failure),
        "conflictCount": str(sum(1 for item in failures if item.kind == CONFLICT)),
        "successCount": str(success),
        "store": record["store"],
        "rule": record["rule"],
        "batch": record["batch"],
    }
    return data, attributes
