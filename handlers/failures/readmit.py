"""Importing failed objects again, in a batch of their own: conflict replacement and operator retries.

An object generation's claim (``claims/RULE/ID.json``) keeps pointing at the
batch that first listed it, whose record lists it as a member: for the intake
(a late duplicate event) and for anything that treats a claim as "covered",
the object stays covered, and no event can admit it a second time. A
re-admission never goes through the intake: it writes a *child* batch record
directly, already ``listed`` (members, import URI), and publishes its driver.

Child ids are derived from the origin batch, so every redelivery or concurrent
run computes the same one and the record's create-if-absent write
(``ifGenerationMatch=0``) lets exactly one exist: ``ORIGIN-replace`` (at most
one per origin: the conflicts of that batch) and ``ORIGIN-retryN`` (the next
free N, for an operator's retry). A child lists which batch it repairs
(``replaces``) or retries (``retryOf``), and its result says so.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from handlers.batch import layout
from handlers.batch.layout import LISTED
from handlers.clients.storage import Conflict, StateStore

REPLACE, RETRY = "replace", "retry"
_RETRY_SUFFIX = re.compile(r"-retry(\d+)$")


def replacement_id(origin: str) -> str:
    return f"{origin}-replace"


def children(store: StateStore, rule: str, origin: str) -> list[str]:
    """Batch ids of the re-admissions of ``origin`` (one listing of its record's name prefix)."""
    prefix = layout.record_path(rule, origin).removesuffix(".json") + "-"
    ids = [item.name.rsplit("/", 1)[-1].removesuffix(".json") for item in store.list(prefix)]
    return [batch for batch in ids if batch == replacement_id(origin) or _RETRY_SUFFIX.fullmatch(batch[len(origin):])]


def next_retry_id(origin: str, existing: Iterable[str]) -> str:
    numbers = [int(found.group(1)) for batch in existing
               if (found := _RETRY_SUFFIX.fullmatch(batch[len(origin):])) is not None]
    return f"{origin}-retry{max(numbers, default=0) + 1}"


def readmitted_ids(store: StateStore, rule: str, origin: str) -> dict[str, str]:
    """Object id -> the child batch that re-admitted it, over every child of ``origin``."""
    found: dict[str, str] = {}
    for child in children(store, rule, origin):
        record = store.read(layout.record_path(rule, child))
        for oid in layout.member_ids(record.data if record else {}):
            found.setdefault(oid, child)
    return found


def create_child(store: StateStore, kick: Callable[[str, str], None], origin: Mapping[str, Any], batch: str,
                 members: Sequence[Mapping[str, Any]], kind: str, extra: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.time) -> bool:
    """Write the child batch's record (``listed``) unless it exists, then publish its driver.

    True when this call created it; False when it existed (an earlier delivery
    or a concurrent run): its driver is published again, which is harmless.
    """
    rule = origin["rule"]
    now = clock()
    record = {
        "batch": batch,
        "rule": rule,
        "store": origin["store"],
        "blobStorageClass": origin.get("blobStorageClass"),
        "openedAt": now,
        "sealedAt": now,
        "sealedBecause": kind,
        "state": LISTED,
        "members": [dict(m) for m in members],
        "importUri": layout.import_uri(store.bucket, rule, batch),
        "replaces" if kind == REPLACE else "retryOf": origin["batch"],
        **dict(extra or {}),
    }
    try:
        store.create(layout.record_path(rule, batch), record)
        created = True
    except Conflict:
        created = False
    kick(rule, batch)
    return created
