"""Whether an object's claim covers it: a sweep must not count a claim its batch dropped.

The intake writes the claim before the membership marker. A delivery that died
in between (a crash, a timeout, the marker's write failing in an outage), or
that gave up after its marker met the seal, leaves a claim naming a batch whose
listing does not have the object. Only that object's redelivery moves the claim
on (``Intake._settle_claim``); when the redelivery is lost for good, the sweep
must admit the object. So a claim covers its object while its batch has no
record or is not listed yet (the marker decides at the listing), and once
listed only if the listing names the object. A listing never changes: each
listed batch's record is read once per rule and run; one not listed yet is read
again on each page whose claims name it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Mapping

from handlers.batch import layout
from handlers.clients.storage import StateStore
from handlers.config import Rule
from handlers.events import StorageObject

READ_THREADS = 16


@dataclass
class ClaimCoverage:
    """One rule's claims, and the member ids of the batches they name whose listing is final."""

    store: StateStore
    rule: Rule
    listed: dict[str, frozenset[str]] = field(default_factory=dict)

    def claim(self, obj: StorageObject) -> Mapping[str, Any] | None:
        """The object's claim (``batch``; ``sweep`` when a sweep admitted it); None when it has none."""
        found = self.store.read(layout.claim_path(self.rule.name, layout.object_id(obj)))
        return None if found is None else found.data

    def covering(self, objects: list[StorageObject]) -> list[Mapping[str, Any] | None]:
        """Each object's claim if it covers the object, else None; the claims and their batches' records read."""
        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            found = list(pool.map(self.claim, objects))
            batches = sorted({claim["batch"] for claim in found if claim is not None} - self.listed.keys())
            for batch, record in zip(batches, pool.map(self._record, batches)):
                if record is not None and layout.has_members_listed(record):
                    self.listed[batch] = frozenset(layout.member_ids(record))
        return [claim if claim is not None and self._covers(obj, claim) else None for obj, claim in zip(objects, found)]

    def _record(self, batch: str) -> Mapping[str, Any] | None:
        record = self.store.read(layout.record_path(self.rule.name, batch))
        return None if record is None else record.data

    def _covers(self, obj: StorageObject, claim: Mapping[str, Any]) -> bool:
        """Whether ``claim`` covers ``obj``: its batch is not listed yet, or its listing names the object."""
        members = self.listed.get(claim["batch"])
        return members is None or layout.object_id(obj) in members
