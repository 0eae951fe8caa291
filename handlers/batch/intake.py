"""Admitting one finalized object into its rule's open batch (docs/design.md, "Intake").

An event is acknowledged only once its object generation is durably covered:
its membership marker exists in a batch that is still open (so the batch's
listing, made after sealing, will include it) or whose record lists it. The
intake never touches the object's data: the driver copies the listed members. Every step is
idempotent, so a duplicate or redelivered event converges to the same answer
and never causes a second import.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from handlers import log
from handlers.batch import layout
from handlers.batch.layout import SEALED
from handlers.batch.sharedreads import SharedReads
from handlers.clients.storage import Conflict, Document, StateStore, create_or_replace
from handlers.config import Config, Rule
from handlers.events import StorageObject
from handlers.retry import Deadline, RetryLater

# A lease still open this long after its window closed has lost its driver.
STALE_AFTER_SECONDS = 60.0
POLL_SECONDS = 0.25
# How often an intake whose marker met the seal looks for the batch's listing (a read shared in the instance).
LISTING_POLL_SECONDS = 0.1

OPENED, JOINED, DUPLICATE = "opened", "joined", "duplicate"
_WAIT, _RESTAGE = "wait", "restage"


@dataclass
class Intake:
    store: StateStore
    config: Config
    kick: Callable[[str, str], None]
    """Publishes the durable follow-up message that drives batch (rule, batch) to its end."""
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    _kicked: set[tuple[str, str]] = field(default_factory=set)
    _shared: SharedReads = field(default_factory=SharedReads)

    def admit(self, obj: StorageObject, rule: Rule, deadline: Deadline, sweep: str | None = None) -> str:
        """Cover ``obj`` by a batch of ``rule``; return OPENED, JOINED or DUPLICATE, or raise RetryLater.

        ``sweep``: the reconcile sweep admitting the object, recorded in the
        claim it writes (a resumed sweep admits it again and counts it as its own admission).

        The common case costs two Cloud Storage calls of its own (create the
        claim, write the membership marker) and three reads it shares with the
        admissions in flight in this instance (:mod:`handlers.batch.sharedreads`):
        the lease, its batch's seal (none: open), and the seal again after the
        marker. Alone, that is five calls. The claim is read only when creating
        it conflicts, or before opening a batch (so that a late duplicate never
        opens one). The lease is written only to open a batch: once per batch.
        """
        oid = layout.object_id(obj)
        path = layout.claim_path(rule.name, oid)
        claim: Document | None = None  # this object's claim, when read and not yet settled
        while not deadline.expired:
            lease, is_open = self._current_batch(rule.name)
            if is_open:
                claimed = claim is not None or (lease.data.get("openedBy") == oid and self.store.read(path) is not None)
                self._ensure_driven(rule, lease, oid, claimed=claimed)
            else:
                if claim is None:
                    verdict, claim = self._existing_claim(obj, rule, oid, path, deadline)
                    if verdict == DUPLICATE:
                        return DUPLICATE
                    if verdict == _WAIT:
                        self.sleep(POLL_SECONDS)
                        continue
                lease = self._open_lease(rule, oid, lease)
                if lease is None:
                    continue
            batch = lease.data["batch"]
            body = {"batch": batch, "rule": rule.name, "claimedAt": self.clock(), **({"sweep": sweep} if sweep else {})}
            try:
                generation = create_or_replace(self.store, path, body, claim)
            except Conflict:
                verdict, claim = self._existing_claim(obj, rule, oid, path, deadline)
                if verdict == DUPLICATE:
                    return DUPLICATE
                if verdict == _WAIT:
                    self.sleep(POLL_SECONDS)
                    claim = None
                continue
            if self._join_and_confirm(obj, rule, oid, batch, deadline):
                return OPENED if lease.data.get("openedBy") == oid else JOINED
            # Listed without it (its marker came after the seal): move this claim to the next batch.
            claim = Document(body, generation)
        raise RetryLater(f"could not place the object in a batch of rule {rule.name!r} in time")

    def _existing_claim(self, obj: StorageObject, rule: Rule, oid: str, path: str,
                        deadline: Deadline) -> tuple[str | None, Document | None]:
        """(verdict, claim) of an earlier delivery's claim; (None, None) when there is none."""
        claim = self.store.read(path)
        if claim is None:
            return None, None
        verdict = self._settle_claim(obj, rule, oid, claim, deadline)
        return verdict, (claim if verdict == _RESTAGE else None)

    def _settle_claim(self, obj: StorageObject, rule: Rule, oid: str, claim: Document, deadline: Deadline) -> str:
        """An earlier delivery claimed this object: DUPLICATE when it is covered, else _WAIT or _RESTAGE."""
        batch = claim.data["batch"]
        record = self.store.read(layout.record_path(rule.name, batch))
        if record is not None:
            if not layout.has_members_listed(record.data):
                return _WAIT
            return DUPLICATE if oid in layout.member_ids(record.data) else _RESTAGE
        lease = self.store.read(layout.lease_path(rule.name))
        if lease is not None and lease.data["batch"] == batch and self._is_open(rule.name, lease):
            self._ensure_driven(rule, lease, oid, claimed=True)
            if self._join_and_confirm(obj, rule, oid, batch, deadline):
                return DUPLICATE
            return _RESTAGE
        return _WAIT

    def _open_lease(self, rule: Rule, oid: str, current: Document | None) -> Document | None:
        """Open a new batch in place of ``current`` (absent or sealed) and publish its driver; None if another won."""
        now = self.clock()
        data = {
            "batch": layout.new_batch_id(now),
            "rule": rule.name,
            "store": rule.store,
            "blobStorageClass": rule.blob_storage_class,
            "openedAt": now,
            "openedBy": oid,
        }
        try:
            generation = create_or_replace(self.store, layout.lease_path(rule.name), data, current)
        except Conflict:
            return None
        log.info("batch opened", rule=rule.name, batch=data["batch"])
        self._kick(rule.name, data["batch"])
        return Document(data, generation)

    def _current_batch(self, rule: str) -> tuple[Document | None, bool]:
        """The rule's lease and whether its batch takes members, read after this call began (shared)."""
        def read() -> tuple[Document | None, bool]:
            lease = self.store.read(layout.lease_path(rule))
            return lease, self._is_open(rule, lease)

        return self._shared.get(("lease", rule), read, not_before=self._shared.clock())

    def _is_open(self, rule: str, lease: Document | None) -> bool:
        """Whether the lease's batch still takes members: no seal yet (a lease sealed by an older version also counts).

        A stale lease's batch also needs no record: the state bucket's lifecycle
        deletes seals, leases and records of an idle rule in no set order, and a
        done batch whose seal went first must not take (and drop) a new member.
        """
        if lease is None or lease.data.get("state") == SEALED:
            return False
        batch = lease.data["batch"]
        if self._sealed(rule, batch):
            return False
        return not self._stale(lease) or self.store.read(layout.record_path(rule, batch)) is None

    def _sealed(self, rule: str, batch: str) -> bool:
        return self.store.read(layout.seal_path(rule, batch)) is not None

    def _ensure_driven(self, rule: Rule, lease: Document, oid: str, claimed: bool) -> None:
        """Re-publish the driver of an open batch that may lack one.

        The opener publishes the driver before writing its claim, so an opener
        without a claim may have died in between; a lease open long past its
        window has lost its driver, whoever opened it.
        """
        opener_unsure = lease.data.get("openedBy") == oid and not claimed
        stale = self._stale(lease)
        if opener_unsure or stale:
            if stale:
                log.warning("open batch is past its window: publishing its driver again", rule=rule.name,
                            batch=lease.data["batch"])
            self._kick(rule.name, lease.data["batch"])

    def _stale(self, lease: Document) -> bool:
        """Whether the lease's batch is past its window by more than a driver could take to seal it."""
        return lease.data["openedAt"] + self.config.batching.max_wait_seconds + STALE_AFTER_SECONDS < self.clock()

    def _kick(self, rule: str, batch: str) -> None:
        if (rule, batch) in self._kicked:
            return
        self.kick(rule, batch)
        self._kicked.add((rule, batch))

    def _join_and_confirm(self, obj: StorageObject, rule: Rule, oid: str, batch: str, deadline: Deadline) -> bool:
        """Mark the object as a member of the batch; True once the batch is sure to include it."""
        self.store.write_marker(layout.member_path(rule.name, batch, oid), layout.source_metadata(obj))
        written = self._shared.clock()
        sealed = self._shared.get(("seal", rule.name, batch), lambda: self._sealed(rule.name, batch), not_before=written)
        if not sealed:
            return True  # the driver seals before it lists: its listing will include the marker
        # Sealed while we wrote the marker: the batch record's listing decides (once listed, it never changes,
        # so every intake of the instance waiting on it shares each read).
        path = layout.record_path(rule.name, batch)
        while not deadline.expired:
            record = self._shared.get(("record", rule.name, batch), lambda: self.store.read(path),
                                      not_before=self._shared.clock())
            if record is not None and layout.has_members_listed(record.data):
                return oid in layout.member_ids(record.data)
            self.sleep(LISTING_POLL_SECONDS)
        raise RetryLater(f"batch {batch} of rule {rule.name!r} is being sealed; its listing is not written yet")
