"""``retry BATCH | --failed-since 24h [--rule R] [--kind K]``: import failed files again, once their cause is fixed.

For each batch, the failures no child batch has taken over yet are imported
again in a child ``BATCH-retryN`` (handlers.failures.readmit): its record is
written directly, so the objects' claims still say they are covered, and two
runs at once converge on the one child. Each object is reported once. A file
moved to quarantine is not retried (its generation left the inbox: move it
back, and its new generation is imported like any new file).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from handlers.cli.context import Context
from handlers.cli.environment import PUBSUB, STORAGE, require
from handlers.cli.errors import EXIT_USAGE, CliError
from handlers.cli.failures import add_window_options, rules_of, window_start
from handlers.cli.terminal import Progress, count
from handlers.failures import readmit
from handlers.failures.history import FailedBatch, failed_batches, find_batch, open_failures
from handlers.failures.model import Failure


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "retry", help="import the failed files of a batch (or of recent batches) again",
        description="Admit failed files again after their cause is fixed (a permission, a conflict resolved by "
                    "hand): one child batch BATCH-retryN per failed batch, with the failures no earlier retry or "
                    "replacement took over. Prints each retried file once, and the batches to watch with tail.")
    parser.add_argument("batch", nargs="?", metavar="BATCH", help="a batch id (from a result or `failures`)")
    add_window_options(parser, "--failed-since", default=None)
    parser.set_defaults(run=run)


@dataclass
class Outcome:
    retried: list[tuple[Failure, str, str]] = field(default_factory=list)
    """(failure, origin batch, child batch)."""
    skipped: list[tuple[Failure, str, str]] = field(default_factory=list)
    """(failure, origin batch, why not retried)."""
    children: list[str] = field(default_factory=list)


def run(ctx: Context, args: argparse.Namespace) -> int:
    if args.batch and args.since is not None:
        raise CliError("give a BATCH or --failed-since DURATION, not both", code=EXIT_USAGE)
    if not args.batch and args.since is None:
        raise CliError("give a BATCH (python -m handlers failures lists them) or --failed-since DURATION (e.g. 24h)",
                       code=EXIT_USAGE)
    rules = rules_of(ctx, args.rule)
    require(STORAGE, PUBSUB)
    store = ctx.runtime.state
    if args.batch:
        found = find_batch(store, rules, args.batch)
        if found is None:
            raise CliError(f"batch {args.batch} has no record in gs://{store.bucket} under the rules "
                           f"{', '.join(rules)}: check the id (python -m handlers failures lists them)")
        batches = [found]
    else:
        batches = list(failed_batches(store, rules, window_start(args.since)))
    outcome = Outcome()
    seen: set[str] = set()
    with Progress(ctx.err, "batches", len(batches)) as progress:
        for failed in batches:
            _retry_batch(ctx, failed, args.kind, seen, outcome)
            progress.advance()
        progress.finish()
    names = ctx.config.names
    for failure, origin, child in outcome.retried:
        ctx.say(f"retried  {names.uri(failure.bucket, failure.name)}  generation {failure.generation}  "
                f"{failure.kind}  from {origin}  in {child}")
    for failure, origin, why in outcome.skipped:
        ctx.say(f"skipped  {names.uri(failure.bucket, failure.name)}  generation {failure.generation}  "
                f"{failure.kind}  from {origin}: {why}")
    summary = f"{count(len(outcome.retried), 'file')} retried in {count(len(outcome.children), 'batch', 'batches')}"
    if outcome.children:
        summary += f" ({', '.join(outcome.children)}): follow their results with `python -m handlers tail`"
    ctx.say(summary)
    return 0


def _retry_batch(ctx: Context, failed: FailedBatch, kinds: list[str] | None, seen: set[str], outcome: Outcome) -> None:
    store = ctx.runtime.state
    chosen, taken = open_failures(store, failed, kinds)
    members = {m["id"]: m for m in failed.record.get("members") or []}
    retry: list[Failure] = []
    for failure in chosen:
        if failure.id in seen:
            continue
        seen.add(failure.id)
        if (failure.action or {}).get("moved"):
            outcome.skipped.append((failure, failed.batch, "moved to quarantine: move it back to import it again"))
        elif failure.id not in members:
            outcome.skipped.append((failure, failed.batch, "not a member of the batch record"))
        else:
            retry.append(failure)
    if not retry:
        return
    child = readmit.next_retry_id(failed.batch, readmit.children(store, failed.rule, failed.batch))
    created = readmit.create_child(store, ctx.runtime.kick_batch, failed.record, child,
                                   [members[f.id] for f in retry], readmit.RETRY)
    if not created:
        outcome.skipped += [(f, failed.batch, f"another run is retrying it in {child}") for f in retry]
        return
    outcome.children.append(child)
    outcome.retried += [(f, failed.batch, child) for f in retry]
