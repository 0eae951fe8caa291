"""Finding the failed members Cloud Logging did not list, by reading the files and asking the store.

The files are those the import read (:mod:`handlers.failures.files`): the
batch's staging copies, or a one-call backfill's source objects at the
generation its listing recorded. Cheapest first, stopping as soon as every
missing failure is found:

1. the files' sizes (one listing of the staging folder, or one metadata read
   per source object): a 0-byte file is ``empty``;
2. a ranged read of each remaining file's first bytes (``handlers.failures.header``):
   no DICOM file, or a truncated one, is ``not-dicom``; a complete header
   without the three UIDs is ``other``;
3. one QIDO search per series: a member whose SOP Instance UID the store does
   not hold is ``other`` (the import did not store it);
4. WADO for the members the store holds: stored bytes that differ from the
   member's (MD5) mean the store kept an earlier version: ``conflict``.

Every failure found so is ``source: verified``. The work is bounded by a time
budget; what it could not check is said, never guessed: a backfill's source
object overwritten or deleted since the listing is counted as ``changed``.
"""

from __future__ import annotations

import base64
import hashlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from handlers.clients.healthcare import ApiError, HealthcareApi
from handlers.failures import kinds
from handlers.failures.files import THREADS, BatchFiles, File
from handlers.failures.header import Header, NotDicom, inspect
from handlers.failures.model import VERIFIED, Failure
from handlers.retry import Deadline

HEADER_BYTES = 64 * 1024
SOP_INSTANCE_UID = "00080018"
QIDO_LIMIT = "50000"
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS = 3, 5, 6


@dataclass
class Verification:
    failures: list[Failure] = field(default_factory=list)
    checked: int = 0
    """Members whose fate was settled (failed, or found stored with their own bytes)."""
    unchecked: int = 0
    """Members left unsettled (budget spent, a header too long to read, a call that failed)."""
    changed: int = 0
    """Members whose file is gone at their generation (a backfill's source changed since its listing)."""


@dataclass
class Verifier:
    api: HealthcareApi

    def find(self, store: str, files: BatchFiles, candidates: Sequence[Mapping[str, Any]], missing: int,
             budget: Deadline) -> Verification:
        """Up to ``missing`` failures among ``candidates`` (members Cloud Logging did not list) of DICOM ``store``."""
        result = Verification()
        found = files.stat(candidates, budget)
        readable: dict[str, File] = {}
        pending: list[Mapping[str, Any]] = []
        for member in candidates:
            file = found.get(member["id"])
            if member["id"] not in found:
                result.unchecked += 1
            elif file is None:
                result.changed += 1
            elif file.size == 0:
                result.failures.append(Failure.of_member(member, kinds.EMPTY, INVALID_ARGUMENT,
                                                         "the object is empty (0 bytes)", VERIFIED))
                result.checked += 1
            else:
                readable[member["id"]] = file
                pending.append(member)
        if len(result.failures) >= missing or budget.expired:
            result.unchecked += len(pending)
            return result

        headers = self._headers(files, pending, readable, budget)
        stored_candidates: list[tuple[Mapping[str, Any], Header]] = []
        for member in pending:
            header = headers.get(member["id"])
            if isinstance(header, str):
                result.failures.append(Failure.of_member(member, kinds.NOT_DICOM, INVALID_ARGUMENT, header, VERIFIED))
                result.checked += 1
            elif header is None or (header.uids is None and not header.complete):
                result.unchecked += 1
            elif header.uids is None:
                result.failures.append(Failure.of_member(
                    member, kinds.OTHER, INVALID_ARGUMENT,
                    "the file lacks a Study, Series or SOP Instance UID", VERIFIED))
                result.checked += 1
            else:
                stored_candidates.append((member, header))
        if len(result.failures) >= missing or budget.expired:
            result.unchecked += len(stored_candidates)
            return result

        in_store, unknown = self._stored(store, stored_candidates, budget)
        maybe_conflicts = []
        for member, header in stored_candidates:
            if member["id"] in unknown:
                result.unchecked += 1
            elif header.sop not in in_store.get((header.study, header.series), set()):
                result.failures.append(Failure.of_member(
                    member, kinds.OTHER, None,
                    f"instance {header.sop} is not in the store after the import (Cloud Logging did not list "
                    "its error)", VERIFIED))
                result.checked += 1
            else:
                maybe_conflicts.append((member, header))
        for member, header in maybe_conflicts:
            if len(result.failures) >= missing or budget.expired:
                result.unchecked += 1
                continue
            same = self._same_bytes(store, header, readable[member["id"]].md5, budget)
            if same is None:
                result.unchecked += 1
                continue
            result.checked += 1
            if not same:
                result.failures.append(Failure.of_member(
                    member, kinds.CONFLICT, ALREADY_EXISTS,
                    f"instance {header.sop} is stored with other bytes (checksum mismatch): the store kept "
                    "the earlier version", VERIFIED))
        return result

    def _headers(self, files: BatchFiles, members: Sequence[Mapping[str, Any]], readable: Mapping[str, File],
                 budget: Deadline) -> dict[str, Header | str | None]:
        """Per member id: its Header, a string saying why it is not DICOM, or None when unread."""

        def read(member: Mapping[str, Any]) -> tuple[str, Header | str | None]:
            if budget.expired:
                return member["id"], None
            size = readable[member["id"]].size
            try:
                data = files.head(member, HEADER_BYTES)
            except Exception:  # noqa: BLE001 - an unread header leaves the member unchecked, never failed
                return member["id"], None
            try:
                header = inspect(data, total_size=size)
            except NotDicom as exc:
                return member["id"], f"not a DICOM file: {exc}"
            if header.truncated:
                return member["id"], f"not a valid DICOM file: truncated: {header.truncated}"
            return member["id"], header

        with ThreadPoolExecutor(max_workers=min(THREADS, len(members) or 1)) as pool:
            return dict(pool.map(read, members))

    def _stored(self, store: str, candidates: Sequence[tuple[Mapping[str, Any], Header]],
                budget: Deadline) -> tuple[dict[tuple[str, str], set[str]], set[str]]:
        """SOP Instance UIDs in the store per (study, series) of the candidates; ids whose series could not be searched."""
        by_series: dict[tuple[str, str], list[str]] = defaultdict(list)
        for member, header in candidates:
            by_series[(header.study, header.series)].append(member["id"])
        found: dict[tuple[str, str], set[str]] = {}
        unknown: set[str] = set()
        for (study, series), ids in by_series.items():
            if budget.expired:
                unknown.update(ids)
                continue
            try:
                rows = self.api.search_dicom(store, f"studies/{study}/series/{series}/instances",
                                             {"includefield": SOP_INSTANCE_UID, "limit": QIDO_LIMIT}, budget)
            except ApiError:
                unknown.update(ids)
                continue
            found[(study, series)] = {str(v) for row in rows for v in row.get(SOP_INSTANCE_UID, {}).get("Value", [])}
        return found, unknown

    def _same_bytes(self, store: str, header: Header, md5: str, budget: Deadline) -> bool | None:
        """Whether the stored instance has the member's bytes; None when that cannot be told."""
        if not md5:
            return None
        try:
            stored = self.api.retrieve_instance(store, header.path, budget)
        except ApiError:
            return None
        return base64.b64encode(hashlib.md5(stored).digest()).decode() == md5
