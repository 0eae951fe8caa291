"""Names and documents of the batching protocol in the state bucket (see docs/design.md).

``leases/{rule}.json``                the rule's current batch; written once per batch, when it opens
``seals/{rule}/{batch}.json``         the batch is sealed (created once by its driver, before it lists)
``claims/{rule}/{object_id}.json``    idempotency record: which batch holds an object generation (and the
                                      reconcile sweep that admitted it, when one did)
``members/{rule}/{batch}/{id}``       membership marker written by the intake (source in its metadata)
``staging/{rule}/{batch}/{id}.dcm``   copies the driver makes of the listed members; the import URI is
                                      this folder's ``*``, which only the driver writes
``batches/{rule}/{batch}.json``       the batch record: members, import, operation, failures, result
``operations/{rule}/{batch}/{worker}.json``  the import operation a worker started under its claim (created
                                      once, so the record's next write need not wait for it)
``failures/{rule}/{batch}.ndjson``    every failure of a batch with more than the message lists (names as the
                                      name policy shows them)
``failed/{rule}/{batch}``             index of the batches whose result names failures or that failed as a whole
                                      (empty; counts in its metadata), read by the failures and retry tools
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any, Mapping

from handlers.events import StorageObject

# A lease's state as the previous version wrote it (a lease is no longer sealed: its batch's seal object is).
SEALED = "sealed"
# Batch ids of one-call backfills (handlers/cli/backfill_run.py): records listing their members, no claims.
EXACT_BATCH_PREFIX = "backfill-"
# Batch record states, in order (collecting and acting only for an import with failures).
SEALING, LISTED, IMPORTING, PUBLISHING, DONE = "sealing", "listed", "importing", "publishing", "done"
COLLECTING, ACTING = "collecting", "acting"


def object_id(obj: StorageObject) -> str:
    """A stable id for one object generation; also the staging copy's name (no wildcard characters)."""
    return hashlib.sha256(f"{obj.bucket}/{obj.name}#{obj.generation}".encode()).hexdigest()[:32]


def new_batch_id(now: float | None = None) -> str:
    """Sortable by opening time, unique across instances."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(4)}"


def lease_path(rule: str) -> str:
    return f"leases/{rule}.json"


def seal_path(rule: str, batch: str) -> str:
    return f"seals/{rule}/{batch}.json"


def claim_path(rule: str, oid: str) -> str:
    return f"claims/{rule}/{oid}.json"


def member_prefix(rule: str, batch: str) -> str:
    return f"members/{rule}/{batch}/"


def member_path(rule: str, batch: str, oid: str) -> str:
    return f"{member_prefix(rule, batch)}{oid}"


def source_metadata(obj: StorageObject) -> dict[str, str]:
    """What a membership marker records of its object (its custom metadata)."""
    return {"source-bucket": obj.bucket, "source-name": obj.name, "source-generation": obj.generation}


def staging_prefix(rule: str, batch: str) -> str:
    return f"staging/{rule}/{batch}/"


def staging_path(rule: str, batch: str, oid: str) -> str:
    return f"{staging_prefix(rule, batch)}{oid}.dcm"


def record_path(rule: str, batch: str) -> str:
    return f"batches/{rule}/{batch}.json"


def operation_prefix(rule: str, batch: str) -> str:
    return f"operations/{rule}/{batch}/"


def operation_path(rule: str, batch: str, worker: str) -> str:
    return f"{operation_prefix(rule, batch)}{worker}.json"


def failures_manifest_path(rule: str, batch: str) -> str:
    return f"failures/{rule}/{batch}.ndjson"


def failed_index_prefix(rule: str | None = None) -> str:
    return f"failed/{rule}/" if rule else "failed/"


def failed_index_path(rule: str, batch: str) -> str:
    return f"{failed_index_prefix(rule)}{batch}"


def import_uri(state_bucket: str, rule: str, batch: str) -> str:
    """Exactly the batch's staging copies: only the driver writes there, ids are hex, so ``*`` covers nothing else."""
    return f"gs://{state_bucket}/{staging_prefix(rule, batch)}*"


def imports_staging(record: Mapping[str, Any], state_bucket: str) -> bool:
    """Whether the batch imports its staging copies; False for a one-call backfill, which imports its source pattern."""
    return record["importUri"] == import_uri(state_bucket, record["rule"], record["batch"])


def member_ids(record: Mapping[str, Any]) -> set[str]:
    return {member["id"] for member in record.get("members") or ()}


def has_members_listed(record: Mapping[str, Any]) -> bool:
    return record.get("state") not in (None, SEALING)
