"""The files a batch's import read, for naming its failures: staging copies, or a one-call backfill's sources.

A batch the driver seals imports its staging folder
(``gs://STATE/staging/RULE/BATCH/*``): Cloud Logging names each failed file by
its staging copy, whose name is the member's id, and verification reads the
copies (:class:`StagedFiles`).

A one-call backfill (``handlers/cli/backfill_run.py``) imports its source
pattern itself (``importUri`` = ``gs://BUCKET/PREFIX/**.dcm``): Logging names
``gs://BUCKET/NAME``, with no generation, and the only file to read is the
source object (:class:`SourceFiles`). A member's generation is the one the
backfill listed before the import; while the object's live generation is still
that one, it is the one the import read (every write makes a new generation).
Otherwise (overwritten or deleted since the listing, or added under the pattern
after it, so no member) which generation the import read is not known: such a
file is counted as *unpinned*, never named with a guessed generation; one whose
object could not be read (a failed call) is counted as *unread*.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, TypeVar

from handlers import log
from handlers.batch import layout
from handlers.clients.storage import LiveObject, StateStore
from handlers.retry import Deadline
from handlers.wildcard import GcsPattern, parse_gcs_uri

THREADS = 16
_T = TypeVar("_T")


@dataclass(frozen=True)
class File:
    """A member's file as the import read it: its size and Base64 MD5 ('' when unknown)."""

    size: int
    md5: str


@dataclass
class Pinned:
    """Cloud Logging entries' ``source`` URIs sorted out."""

    members: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    """source -> the member whose very generation the import read."""
    unpinned: set[str] = field(default_factory=set)
    """Files the import read whose generation is not known (a backfill's source changed since its listing)."""
    unread: set[str] = field(default_factory=set)
    """Members' files whose live generation could not be read (a failed Cloud Storage call): not confirmed."""
    unnamed_members: set[str] = field(default_factory=set)
    """Ids of the members among ``unpinned`` and ``unread``: listed as failed, so not to verify again."""
    strangers: int = 0
    """Entries naming no file of this import."""


class BatchFiles(Protocol):
    unseen: str
    """What verification cannot see, said when failures are left unnamed ('' when it sees every file)."""

    def pin(self, sources: Iterable[str]) -> Pinned:
        """Which member each Cloud Logging entry's ``source`` names."""
        ...

    def stat(self, members: Sequence[Mapping[str, Any]], budget: Deadline) -> dict[str, File | None]:
        """Per member id: its file; None when that generation is known gone; absent when it could not be told."""
        ...

    def head(self, member: Mapping[str, Any], length: int) -> bytes:
        """Up to the first ``length`` bytes of the member's file."""
        ...


def batch_files(store: StateStore, record: Mapping[str, Any]) -> BatchFiles:
    """The files the batch's import read: its staging copies, or (a one-call backfill) its source objects."""
    if layout.imports_staging(record, store.bucket):
        return StagedFiles(store, record)
    return SourceFiles(store, record)


class StagedFiles:
    """Staging copies ``gs://STATE/staging/RULE/BATCH/ID.dcm``: the id names the member."""

    unseen = ""

    def __init__(self, store: StateStore, record: Mapping[str, Any]) -> None:
        self.store, self.rule, self.batch = store, record["rule"], record["batch"]
        self.members = {m["id"]: m for m in record.get("members") or []}

    def pin(self, sources: Iterable[str]) -> Pinned:
        staging = f"gs://{self.store.bucket}/{layout.staging_prefix(self.rule, self.batch)}"
        pinned = Pinned()
        for source in sources:
            oid = source[len(staging):].removesuffix(".dcm") if source.startswith(staging) else None
            member = self.members.get(oid) if oid else None
            if member is None:
                pinned.strangers += 1
            else:
                pinned.members[source] = member
        return pinned

    def stat(self, members: Sequence[Mapping[str, Any]], budget: Deadline) -> dict[str, File | None]:
        """One listing of the staging folder; a member without a copy is left out (not told)."""
        wanted = {m["id"] for m in members}
        copies = {item.name.rsplit("/", 1)[-1].removesuffix(".dcm"): item
                  for item in self.store.list(layout.staging_prefix(self.rule, self.batch))}
        return {oid: File(copy.size, copy.md5) for oid, copy in copies.items() if oid in wanted}

    def head(self, member: Mapping[str, Any], length: int) -> bytes:
        return self.store.read_range(layout.staging_path(self.rule, self.batch, member["id"]), 0, length)


class SourceFiles:
    """A one-call backfill's source objects, read at the generation its listing recorded."""

    unseen = ("a one-call backfill imports what its pattern matches when the import runs: objects added under it "
              "after the backfill listing are no members, and verification does not see them")

    def __init__(self, store: StateStore, record: Mapping[str, Any]) -> None:
        self.store, self.batch = store, record["batch"]
        self.pattern: GcsPattern = parse_gcs_uri(record["importUri"])
        self.by_name = {(m["bucket"], m["name"]): m for m in record.get("members") or []}
        self._live: dict[str, LiveObject | None] = {}
        """Member id -> its object's live generation, read once across Cloud Logging polls (None: no live object)."""

    def pin(self, sources: Iterable[str]) -> Pinned:
        """Exact members by name and live generation, read THREADS at a time (once each, a failed read again)."""
        pinned = Pinned()
        named: list[tuple[str, Mapping[str, Any]]] = []
        for source in sources:
            bucket, name = _bucket_and_name(source)
            member = self.by_name.get((bucket, name))
            if member is not None:
                named.append((source, member))
            elif self.pattern.matches(bucket, name):
                pinned.unpinned.add(source)
            else:
                pinned.strangers += 1
        todo = list({m["id"]: m for _, m in named if m["id"] not in self._live}.values())
        self._live.update(read for read in _parallel(todo, self._read_live) if read is not None)
        for source, member in named:
            if member["id"] not in self._live:
                pinned.unread.add(source)
                pinned.unnamed_members.add(member["id"])
            elif _file(member, self._live[member["id"]]) is None:
                pinned.unpinned.add(source)
                pinned.unnamed_members.add(member["id"])
            else:
                pinned.members[source] = member
        return pinned

    def stat(self, members: Sequence[Mapping[str, Any]], budget: Deadline) -> dict[str, File | None]:
        """One metadata read per member (THREADS at a time); a failed or unsent read leaves the member out."""

        def read(member: Mapping[str, Any]) -> tuple[str, File | None] | None:
            live = None if budget.expired else self._read_live(member)
            return None if live is None else (live[0], _file(member, live[1]))

        return dict(found for found in _parallel(members, read) if found is not None)

    def _read_live(self, member: Mapping[str, Any]) -> tuple[str, LiveObject | None] | None:
        """(member id, its object's live generation, None when there is none); None when the read failed."""
        try:
            return member["id"], self.store.live_source(member["bucket"], member["name"])
        except Exception as exc:  # noqa: BLE001 - an unread object is said, never guessed
            log.warning("a one-call backfill's source object could not be read: its failure is not confirmed",
                        batch=self.batch, error=exc.__class__.__name__, code=getattr(exc, "code", None))
            return None

    def head(self, member: Mapping[str, Any], length: int) -> bytes:
        return self.store.read_source_range(member["bucket"], member["name"], member["generation"], 0, length)


def _file(member: Mapping[str, Any], live: LiveObject | None) -> File | None:
    """The member's file while the object's live generation is the one listed (so the import read it); else None."""
    if live is None or live.generation != member["generation"]:
        return None
    return File(live.size, live.md5)


def _bucket_and_name(source: str) -> tuple[str, str]:
    """``gs://BUCKET/NAME`` split; ("", "") for anything else."""
    if not source.startswith("gs://"):
        return "", ""
    bucket, _, name = source[len("gs://"):].partition("/")
    return bucket, name


def _parallel(items: Sequence[Mapping[str, Any]], call: Callable[[Mapping[str, Any]], _T]) -> list[_T]:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(THREADS, len(items))) as pool:
        return list(pool.map(call, items))
