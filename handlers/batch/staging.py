"""Copying a batch's members into its staging folder, starting while the batch is still open.

The import URI is the staging folder's ``*``, so each member is copied there
before the import, and nothing else may be. A marker listed while no seal
exists (the driver reads the seal after a listing that shows a new marker) is
certainly a member: markers stay until the batch is done, and every listing made
after the seal, whichever delivery's listing becomes the record, includes every
marker written before it. So the driver starts copying those during the window:
by the time the batch is sealed, most copies are done and the import follows at
once. A listing made after the seal is the membership only once its delivery has
created the record (another delivery's earlier listing may win without a marker
that landed since), so the driver copies the rest only then. Only members are
ever started here. Copies are idempotent (same generation, same name), so a
resumed delivery simply copies everything again. A member that can never be
copied (its generation gone, or refused for good) is skipped, with its reason,
so that it cannot hold up the rest of its batch.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable

from handlers.batch import layout
from handlers.clients.storage import SourceGone, SourceUnreadable, StateStore

COPY_THREADS = 16
GONE = "generation deleted or overwritten before import"


class StagingCopies:
    """The staging copies of one batch, made by one delivery of its driver."""

    def __init__(self, store: StateStore, rule: str, batch: str, threads: int = COPY_THREADS) -> None:
        self.store, self.rule, self.batch, self.threads = store, rule, batch, threads
        self._pool: ThreadPoolExecutor | None = None
        self._copies: dict[str, Future[str | None]] = {}

    def start(self, members: Iterable[dict[str, Any]]) -> None:
        """Start copying the members not started yet (returns at once); each must certainly be a member."""
        for member in members:
            if member["id"] not in self._copies:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="staging")
                self._copies[member["id"]] = self._pool.submit(self._copy, member)

    def finish(self, members: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Copy every member (reusing the copies already made); the members to skip, each with its ``reason``.

        Skipped: a generation gone (generations never come back, so a copy that
        found it gone early stands), or one Cloud Storage refuses to copy for good
        (a 4xx that asking again cannot change; a generation that is no number).
        A copy that failed otherwise is tried again once; a second failure
        propagates, like any failed call of the driver.
        """
        self.start(members)
        skipped = []
        for member in members:
            try:
                reason = self._copies[member["id"]].result()
            except Exception:  # noqa: BLE001 (any failure of the early copy: the retry below decides)
                reason = self._copy(member)
            if reason is not None:
                skipped.append({**member, "reason": reason})
        return skipped

    def unstarted(self, members: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The members whose copy this delivery has not started."""
        return [member for member in members if member["id"] not in self._copies]

    def unfinished(self, members: Iterable[dict[str, Any]]) -> int:
        """How many of ``members`` have no finished copy yet (not started, or under way)."""
        return sum(1 for member in members if not (copy := self._copies.get(member["id"])) or not copy.done())

    def close(self) -> None:
        """Stop the copying threads (copies under way finish; a later delivery copies again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _copy(self, member: dict[str, Any]) -> str | None:
        """None once the member's generation is in the staging folder; else why it never will be."""
        try:
            self.store.copy_in(member["bucket"], member["name"], member["generation"],
                               layout.staging_path(self.rule, self.batch, member["id"]), {})
        except SourceGone:
            return GONE
        except SourceUnreadable as exc:
            return exc.reason
        return None
