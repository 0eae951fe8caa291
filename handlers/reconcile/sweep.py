"""One reconcile sweep: list each rule's watched prefix, and admit what no claim covers.

For every rule, in config order, the bucket is listed under the rule's literal
prefix, in name order, a page (1,000 objects) at a time, names, generations and
creation times only. An object counts when it was created inside the sweep's
window and routes to this rule (an object another rule takes is counted there).
It is **covered** when its claim exists and its batch is not listed yet or its
listing names the object (the intake writes the claim before its marker, so
this holds for objects whose batch is still open, and keeps holding after their
import, whatever its outcome: :mod:`handlers.reconcile.claims`), or when a
one-call backfill record lists it (those write no claims). Anything else is
admitted through the function's own intake, as its event would have been: it
joins the rule's open batch and is reported by that batch's result.

Cost: the listing, one claim read per object created in the window, one record
read per distinct batch those claims name, the admissions; nothing is read per
object older than the window. After each page the sweep document records how
far the listing got, so an interrupted sweep resumes there (``startOffset``),
and a page seen twice imports nothing twice (claims; a claim the sweep itself
wrote names the sweep: its object is admitted again, as a redelivered event
would be, since the earlier run may have stopped before writing its marker, and
is still reported as admitted).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from handlers import log
from handlers.batch.intake import DUPLICATE, Intake
from handlers.batch.layout import PUBLISHING
from handlers.batch.reporting import Reporter
from handlers.batch.results import rfc3339
from handlers.clients.storage import Document, Source, SourceObject, StateStore
from handlers.config import MAX_RECONCILE_WINDOW_HOURS, Config, Rule
from handlers.events import StorageObject
from handlers.reconcile import report
from handlers.reconcile.backfills import BackfillCoverage
from handlers.reconcile.claims import ClaimCoverage
from handlers.reconcile.progress import RUNNING, SWEEP_PATH, Progress, Window, window_of
from handlers.retry import Deadline, RetryLater

PAGE = 1000
ADMIT_THREADS = 8
ADMIT_BUDGET_SECONDS = 60.0
# Take no further page when less than this is left of the budget: a page's admissions must fit.
PAGE_RESERVE_SECONDS = ADMIT_BUDGET_SECONDS + 15.0
# The sweep document is a single object name: written at most this often while listing (it is also
# under Cloud Storage's one write per second per name).
SAVE_EVERY_SECONDS = 10.0


@dataclass
class PageBudget:
    """One run's budget, in pages: the first page always, so that a budget under the reserve still gets on."""

    deadline: Deadline
    pages: int = 0

    def allows_another(self) -> bool:
        """Whether the run takes another page: its first, or one more while PAGE_RESERVE_SECONDS are left."""
        return self.pages == 0 or self.deadline.remaining() >= PAGE_RESERVE_SECONDS


@dataclass
class Sweeper:
    store: StateStore
    source: Source
    config: Config
    intake: Intake
    reporter: Reporter
    clock: Callable[[], float] = time.time

    def run(self, deadline: Deadline, since: float | None = None) -> dict[str, Any]:
        """Sweep (or resume the unfinished sweep) and publish its result; the message, or RetryLater.

        Each run is its own worker, and takes at least one page whatever its
        budget. Raises :class:`~handlers.reconcile.progress.SweepBusy` when
        another run is at work, :class:`~handlers.reconcile.progress.UnfinishedSweep`
        when ``since`` meets an interrupted sweep of another window, RetryLater when
        the budget ends first or the result cannot be published yet. On any
        error the sweep is released, so the next run resumes it at once.
        """
        progress = Progress(self.store, self.config, self.clock)
        sweep = progress.begin(since)
        if sweep.data["resumed"]:
            log.info("reconcile sweep resumed", sweep=sweep.data["sweep"], resumed=sweep.data["resumed"])
        elif sweep.data["unswept"]:
            _warn_unswept(sweep.data)
        try:
            if sweep.data["state"] == RUNNING:
                window, budget = window_of(sweep.data), PageBudget(deadline)
                for rule in self.config.rules:
                    if rule.name in sweep.data["rules"]:
                        sweep = self._sweep_rule(progress, sweep, rule, window, budget)
                sweep = self._conclude(progress, sweep)
            if sweep.data["state"] == PUBLISHING:
                sweep = self.reporter.publish(sweep, SWEEP_PATH, progress.worker)
        except Exception:
            progress.release()
            raise
        return sweep.data["result"]

    # -- one rule -----------------------------------------------------------------
    def _sweep_rule(self, progress: Progress, sweep: Document, rule: Rule, window: Window,
                    budget: PageBudget) -> Document:
        """List the rule's prefix page by page from where the sweep got; the sweep document, saved.

        Progress is saved after a page that admitted objects (so the message names
        them), every SAVE_EVERY_SECONDS otherwise, and before stopping; a run that
        dies re-lists at most that much (a page seen twice changes nothing).
        """
        data = sweep.data
        if data["rules"][rule.name]["done"]:
            return sweep
        backfilled = BackfillCoverage(self.store, rule, window)
        backfilled.refresh()
        claims = ClaimCoverage(self.store, rule)
        saved_at = time.monotonic()
        start = data["rules"][rule.name]
        for page in _pages(self.source.list(start["bucket"], start["prefix"], start["after"]), start["after"]):
            if not budget.allows_another():
                progress.save(sweep, data)
                raise RetryLater(f"reconcile sweep {data['sweep']}: budget spent in rule {rule.name!r}; "
                                 "the next run resumes where the listing stopped")
            counts, admitted = self._page(data["sweep"], rule, page, window, backfilled, claims)
            budget.pages += 1
            state = {**data["rules"][rule.name], "after": page[-1].name}
            for name, value in counts.items():
                state[name] += value
            state["batches"] = sorted({*state["batches"], *(entry["batch"] for entry in admitted)})
            kept = [*data["admitted"], *admitted][:report.MAX_LISTED_OBJECTS + 1]
            data = {**data, "rules": {**data["rules"], rule.name: state}, "admitted": kept}
            if admitted or time.monotonic() - saved_at >= SAVE_EVERY_SECONDS:
                sweep, saved_at = progress.save(sweep, data), time.monotonic()
                data = sweep.data
        done = {**data["rules"][rule.name], "done": True}
        return progress.save(sweep, {**data, "rules": {**data["rules"], rule.name: done}})

    def _page(self, sweep: str, rule: Rule, page: list[SourceObject], window: Window, backfilled: BackfillCoverage,
              claims: ClaimCoverage) -> tuple[dict[str, int], list[dict[str, str]]]:
        """Counters for one page, and the objects admitted (bucket, name, generation, rule, batch).

        Before admitting, the rule's backfill records are read again: a backfill
        that started since the rule's listing began covers its objects too. An
        object whose claim this ``sweep`` wrote was admitted by an earlier run of
        it that stopped before saving the page, perhaps between the claim and the
        marker: it goes through the intake again (which writes a missing marker,
        or moves the claim on if its batch was listed without it) and counts as
        admitted whatever the verdict.
        """
        bucket = rule.pattern.bucket
        counts = {"listed": len(page), "inWindow": 0, "matched": 0, "covered": 0, "coveredByBackfill": 0,
                  "admitted": 0}
        candidates = []
        for item in page:
            if not window.holds(item.created):
                continue
            counts["inWindow"] += 1
            route = self.config.route(bucket, item.name)
            if route.rule is None or route.rule.name != rule.name:
                continue
            counts["matched"] += 1
            candidates.append(StorageObject(bucket, item.name, item.generation, None, "reconcile"))
        covering = claims.covering(candidates)
        if any(claim is None and (obj.name, obj.generation) not in backfilled
               for obj, claim in zip(candidates, covering)):
            backfilled.refresh()
        to_admit, ours, admitted = [], set(), []
        for obj, claim in zip(candidates, covering):
            if claim is not None and claim.get("sweep") == sweep:
                ours.add(obj.name)  # its marker may be missing: admitted again, which writes it if so
                to_admit.append(obj)
            elif claim is not None:
                counts["covered"] += 1
            elif (obj.name, obj.generation) in backfilled:
                counts["coveredByBackfill"] += 1
            else:
                to_admit.append(obj)
        with ThreadPoolExecutor(max_workers=ADMIT_THREADS) as pool:
            outcomes = list(pool.map(lambda obj: self._admit(sweep, rule, obj, claims), to_admit))
        for obj, (verdict, batch) in zip(to_admit, outcomes):
            if verdict == DUPLICATE and obj.name not in ours:  # its event won the race since the claim was read
                counts["covered"] += 1
                continue
            counts["admitted"] += 1
            admitted.append(_admitted(rule, obj, batch))
            log.info("object admitted by reconcile", rule=rule.name, verdict=verdict, batch=batch,
                     generation=obj.generation, object=self.config.names.uri(obj.bucket, obj.name))
        return counts, admitted

    def _admit(self, sweep: str, rule: Rule, obj: StorageObject, claims: ClaimCoverage) -> tuple[str, str]:
        """The intake's verdict on ``obj``, and the batch its claim names now."""
        verdict = self.intake.admit(obj, rule, Deadline(ADMIT_BUDGET_SECONDS), sweep=sweep)
        claim = claims.claim(obj)
        if claim is None:
            raise RetryLater(f"claim of an object admitted by reconcile not found (rule {rule.name!r})")
        return verdict, claim["batch"]

    # -- the end --------------------------------------------------------------------
    def _conclude(self, progress: Progress, sweep: Document) -> Document:
        """Move the checkpoint (if the window joins it), then freeze the result into the sweep document."""
        moved = progress.checkpoint(sweep.data)
        message, attributes = report.reconcile_message(sweep.data, self.config.names, finished_at=self.clock(),
                                                       checkpoint_moved=moved)
        totals = message["totals"]
        log.info("reconcile sweep done", sweep=sweep.data["sweep"], outcome=message["outcome"],
                 listed=totals["listed"], matched=totals["matched"], covered=totals["covered"],
                 coveredByBackfill=totals["coveredByBackfill"], admitted=totals["admitted"], checkpointMoved=moved,
                 checkpointNote=None if moved else report.CHECKPOINT_KEPT)
        return self.reporter.conclude(sweep, SWEEP_PATH, message, attributes, progress.worker)


def _admitted(rule: Rule, obj: StorageObject, batch: str) -> dict[str, str]:
    """An admitted object as the sweep document (and its message) lists it."""
    return {"bucket": obj.bucket, "name": obj.name, "generation": obj.generation, "rule": rule.name, "batch": batch}


def _warn_unswept(sweep: dict[str, Any]) -> None:
    """The WARNING a new sweep capped at MAX_RECONCILE_WINDOW_HOURS logs: the span the checkpoint passes over."""
    unswept = sweep["unswept"]
    log.warning("reconcile window capped: objects created in the unswept span are never looked at",
                sweep=sweep["sweep"], unsweptFrom=rfc3339(unswept["from"]), unsweptTo=rfc3339(unswept["to"]),
                maxWindowHours=MAX_RECONCILE_WINDOW_HOURS, action=report.UNSWEPT_ADVICE)


def _pages(objects: Iterable[SourceObject], after: str | None) -> Iterator[list[SourceObject]]:
    """Pages of at most PAGE objects, skipping ``after`` itself (``startOffset`` is inclusive)."""
    page: list[SourceObject] = []
    for item in objects:
        if after is not None and item.name <= after:
            continue
        page.append(item)
        if len(page) == PAGE:
            yield page
            page = []
    if page:
        yield page

