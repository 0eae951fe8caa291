"""``on_conflict: replace``: a re-sent instance whose bytes differ replaces the stored one.

The API never overwrites ("checksum mismatch"), so replacing takes a delete
and a new import. Two halves, so that a delete can never hit what a
replacement already imported:

* the batch that saw the conflicts (:func:`plan`, in its ``acting`` step) reads
  each file's UIDs from the file its import read (its staging copy, or a
  one-call backfill's source object: :mod:`handlers.failures.files`), claims
  the object generation's one replacement with a marker
  ``replacements/RULE/ID.json`` (create-if-absent: at most one replacement per
  object generation, ever), and writes the child batch ``ORIGIN-replace``
  listing those members and their instances;
* the child batch (:func:`replace_stored`, after its import is claimed and
  before the import call) saves each stored instance's bytes to
  ``replaced/RULE/CHILD/ID.dcm`` in the state bucket (the old version stays
  recoverable), deletes it with DICOMweb DeleteInstance, then imports the
  files. A stored instance that already has the new bytes (a redelivery after
  the import) is left alone.

The log line of each replacement gives the instance, the re-sent object and
its generation (``newGeneration``), and the old version as it is kept: the
saved copy and that copy's generation (``savedCopy``, ``savedCopyGeneration``).
Which object generation the old version was imported from is not known: the
store keeps no source, and a re-send may come under another name.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from handlers import log
from handlers.batch import layout
from handlers.clients.healthcare import ApiError, HealthcareApi
from handlers.clients.storage import Conflict, SourceGone, StateStore
from handlers.failures import readmit
from handlers.failures.files import BatchFiles, File, batch_files
from handlers.failures.header import NotDicom, inspect
from handlers.failures.model import Failure
from handlers.privacy import NamePolicy
from handlers.retry import Deadline

HEADER_BYTES = 64 * 1024


def marker_path(rule: str, oid: str) -> str:
    return f"replacements/{rule}/{oid}.json"


def saved_copy_path(rule: str, batch: str, oid: str) -> str:
    return f"replaced/{rule}/{batch}/{oid}.dcm"


@dataclass
class Plan:
    batch: str
    members: list[dict[str, Any]] = field(default_factory=list)
    instances: dict[str, str] = field(default_factory=dict)
    """Member id -> ``studies/S/series/SE/instances/I`` to delete before the child's import."""
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Failure id -> its ``action`` in the origin's result."""


def plan(store: StateStore, record: Mapping[str, Any], conflicts: Sequence[Failure], deadline: Deadline) -> Plan:
    """Which conflicts the child batch replaces (each object generation at most once), and why not the others."""
    rule, origin = record["rule"], record["batch"]
    child = readmit.replacement_id(origin)
    result = Plan(child)
    members = {m["id"]: m for m in record.get("members") or []}
    files = batch_files(store, record)
    readable = files.stat([members[failure.id] for failure in conflicts], deadline)
    for failure in conflicts:
        path = _instance_path(files, members[failure.id], readable.get(failure.id))
        if path is None:
            result.actions[failure.id] = {"policy": "replace", "done": False,
                                          "error": "the file's Study, Series and SOP Instance UIDs cannot be read"}
            continue
        owner = _claim_replacement(store, rule, failure.id, child, origin, path)
        if owner != child:
            result.actions[failure.id] = {"policy": "replace", "done": False, "batch": owner,
                                          "error": f"already replaced once, by batch {owner}: at most one "
                                                   "replacement per object generation"}
            continue
        result.members.append(dict(members[failure.id]))
        result.instances[failure.id] = path
        result.actions[failure.id] = {"policy": "replace", "done": True, "batch": child}
    return result


def _instance_path(files: BatchFiles, member: Mapping[str, Any], file: File | None) -> str | None:
    """The instance the member's file holds; None when its file or its UIDs cannot be read."""
    if file is None:
        return None
    try:
        header = inspect(files.head(member, HEADER_BYTES), total_size=file.size)
    except (NotDicom, SourceGone):
        return None
    return header.path if header.uids else None


def _claim_replacement(store: StateStore, rule: str, oid: str, child: str, origin: str, instance: str) -> str:
    """The batch that owns this object generation's one replacement (``child`` when this claim won or holds)."""
    path = marker_path(rule, oid)
    try:
        store.create(path, {"batch": child, "origin": origin, "instance": instance})
        return child
    except Conflict:
        existing = store.read(path)
        return str(existing.data.get("batch")) if existing else child


def replace_stored(store: StateStore, api: HealthcareApi, record: Mapping[str, Any], names: NamePolicy,
                   deadline: Deadline) -> None:
    """In the child batch, before its import call: save and delete each stored instance its files replace."""
    rule, batch, dicom_store = record["rule"], record["batch"], record["store"]
    instances: Mapping[str, str] = record.get("replaceInstances") or {}
    if not instances:
        return
    new_md5 = {item.name.rsplit("/", 1)[-1].removesuffix(".dcm"): item.md5
               for item in store.list(layout.staging_prefix(rule, batch))}
    members = {m["id"]: m for m in record.get("members") or []}
    for oid, path in instances.items():
        member = members.get(oid)
        if member is None:
            continue  # skipped by the copy (its generation is gone): nothing replaces the stored instance
        try:
            stored = api.retrieve_instance(dicom_store, path, deadline)
        except ApiError as exc:
            if exc.code == 404:
                continue  # deleted already (an earlier delivery, or by hand): the import stores the new file
            raise
        if base64.b64encode(hashlib.md5(stored).digest()).decode() == new_md5.get(oid):
            continue  # the new bytes are already stored: an earlier delivery got this far
        copy = saved_copy_path(rule, batch, oid)
        saved = store.write_bytes(copy, stored, {"instance": path, "replaced-by": f"{batch}/{oid}"})
        api.delete_instance(dicom_store, path, deadline)
        log.info("stored instance replaced: the old version is saved, the re-sent file is imported next",
                 rule=rule, batch=batch, replaces=record.get("replaces"), instance=path,
                 object=names.uri(member["bucket"], member["name"]), newGeneration=member["generation"],
                 savedCopy=f"gs://{store.bucket}/{copy}",
                 savedCopyGeneration=str(saved) if saved is not None else "saved by an earlier delivery")
