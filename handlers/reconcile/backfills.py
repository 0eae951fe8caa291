"""The objects one-call backfill batches list: covered without claims, so a sweep must not admit them.

A one-call backfill imports a source pattern in one call and writes no claims;
its batch record (``batches/RULE/backfill-ID.json``) lists the objects. The
sweep reads a rule's backfill records when it starts the rule, and again before
it admits anything, so a backfill started while the sweep lists is seen too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from handlers.batch.layout import EXACT_BATCH_PREFIX
from handlers.clients.storage import StateStore
from handlers.config import Rule
from handlers.reconcile.progress import Window


@dataclass
class BackfillCoverage:
    """(name, generation) of the rule's objects that one-call backfills written since the window began list."""

    store: StateStore
    rule: Rule
    window: Window
    covered: set[tuple[str, str]] = field(default_factory=set)
    read: set[str] = field(default_factory=set)
    """Records already read (a record's members never change)."""

    def refresh(self) -> None:
        """Read the rule's backfill records not read yet.

        Only records written since the window began can list an object created
        in it (a backfill lists what exists when it runs).
        """
        for listed in self.store.list(f"batches/{self.rule.name}/{EXACT_BATCH_PREFIX}"):
            if listed.name in self.read or (listed.created is not None and listed.created < self.window.start):
                continue
            record = self.store.read(listed.name)
            if record is None:
                continue
            self.read.add(listed.name)
            for member in record.data.get("members") or []:
                if member.get("bucket") == self.rule.pattern.bucket:
                    self.covered.add((member["name"], member["generation"]))

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self.covered
