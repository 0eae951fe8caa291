"""``failures [--since 24h] [--rule R] [--kind K]``: the failed files of past batches, newest first.

Read from the state bucket (the index ``failed/RULE/BATCH`` and each batch's
record), so it sees every failure, beyond the 100 a message lists. Names go
through ``results.object_names`` (hashed mode shows hashes). Each line says what
happened since: the rule's policy (``action``), or the child batch that took
the file over (a replacement or a retry). A batch that failed as a whole (its
import refused, or none of its failures named) is one line: its error, and how
many of its files; so is a batch whose outcome is UNKNOWN, of kind ``unknown``.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone

from handlers.cli.arguments import duration
from handlers.cli.context import Context
from handlers.cli.environment import STORAGE, require
from handlers.cli.errors import CliError
from handlers.cli.terminal import Column, Table, count
from handlers.failures.history import FailedBatch, failed_batches, open_failures
from handlers.failures.kinds import KINDS, UNKNOWN_OUTCOME
from handlers.failures.model import WHOLE_BATCH, Failure
from handlers.privacy import NamePolicy

COLUMNS = (Column("concluded"), Column("rule"), Column("batch"), Column("kind"), Column("object"),
           Column("generation"), Column("found by"), Column("reason"), Column("since then"))
REASON_CHARS = 160


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "failures", help="list the files imports failed, newest first, with their reason",
        description="List failed files from the batch records in the state bucket (every failure, not only the "
                    "first 100 a result message lists), newest batch first: kind, reason, how it was found "
                    "(Cloud Logging or verification), and what happened since (policy, replacement, retry).")
    add_window_options(parser, "--since")
    parser.add_argument("--json", action="store_true", help="one JSON object per failed file")
    parser.set_defaults(run=run)


def add_window_options(parser: argparse.ArgumentParser, since_flag: str, default: str | None = "24h") -> None:
    parser.add_argument(since_flag, dest="since", default=default, metavar="DURATION", type=duration,
                        help="batches concluded within this long (24h, 90m, 7d" + (f"; default {default})" if default
                                                                                  else ")"))
    parser.add_argument("--rule", metavar="NAME", help="only this rule's batches")
    parser.add_argument("--kind", choices=(*KINDS, UNKNOWN_OUTCOME), action="append",
                        help="only failures of this kind (repeatable; unknown: the members of UNKNOWN batches)")


def window_start(seconds: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(seconds=seconds)


def rules_of(ctx: Context, name: str | None) -> list[str]:
    if name is None:
        return [rule.name for rule in ctx.config.rules]
    if ctx.config.rule_named(name) is None:
        known = ", ".join(rule.name for rule in ctx.config.rules)
        raise CliError(f"rule {name!r} is not in {ctx.config.path} (rules: {known})")
    return [name]


def run(ctx: Context, args: argparse.Namespace) -> int:
    since = window_start(args.since)
    rules = rules_of(ctx, args.rule)
    require(STORAGE)
    names = ctx.config.names
    table = Table(COLUMNS)
    shown = 0
    for failed in failed_batches(ctx.runtime.state, rules, since):
        still_open, taken = open_failures(ctx.runtime.state, failed)
        if failed.error is not None:
            shown += _show_whole_batch(ctx, failed, table, still_open, taken, args)
            continue
        for failure in failed.failures:
            if args.kind and failure.kind not in args.kind:
                continue
            after = f"imported again in {taken[failure.id]}" if failure.id in taken else _action(failure, names)
            if args.json:
                ctx.say(json.dumps({"concludedAt": failed.concluded_at, "rule": failed.rule, "batch": failed.batch,
                                    **failure.shown(names), "sinceThen": after or None}))
            else:
                cells = [failed.concluded_at, failed.rule, failed.batch, failure.kind,
                         names.uri(failure.bucket, failure.name), failure.generation, failure.source,
                         failure.message[:REASON_CHARS], after]
                table.add(cells, plain="  ".join(c for c in cells if c), failed=failure in still_open)
            shown += 1
    if not args.json:
        table.render(ctx.out)
        ctx.note(f"{count(shown, 'failed file')} since {since.strftime('%Y-%m-%dT%H:%M:%SZ')}"
                 + (f" (rule {args.rule})" if args.rule else ""))
    return 0


def _show_whole_batch(ctx: Context, failed: FailedBatch, table: Table, still_open: list[Failure],
                      taken: dict[str, str], args: argparse.Namespace) -> int:
    """One line for a batch that failed as a whole (its error, how many of its files): how many files it shows."""
    failures = failed.failures
    if not failures or (args.kind and failures[0].kind not in args.kind):
        return 0
    error, kind = failed.error or {}, failures[0].kind
    children = sorted({taken[f.id] for f in failures if f.id in taken})
    again = sum(1 for f in failures if f.id in taken)
    after = ""
    if children:
        share = "" if again == len(failures) else f"{again} of {len(failures)} "
        after = f"{share}imported again in {', '.join(children)}"
    if args.json:
        ctx.say(json.dumps({"concludedAt": failed.concluded_at, "rule": failed.rule, "batch": failed.batch,
                            "wholeBatch": True, "objectCount": len(failures), "kind": kind, "error": error,
                            "source": WHOLE_BATCH, "sinceThen": after or None}))
    else:
        cells = [failed.concluded_at, failed.rule, failed.batch, kind, f"all {count(len(failures), 'file')}", "",
                 WHOLE_BATCH, error.get("message", "")[:REASON_CHARS], after]
        table.add(cells, plain="  ".join(c for c in cells if c), failed=bool(still_open))
    return len(failures)


def _action(failure: Failure, names: NamePolicy) -> str:
    action = failure.action or {}
    if not action:
        return ""
    policy = action.get("policy", "")
    if not action.get("done"):
        return f"{policy} not applied: {action.get('error', '')}"
    if policy == "quarantine":
        bucket, _, name = str(action.get("to", ""))[len("gs://"):].partition("/")
        refused = f", not moved: {action['error']}" if action.get("error") else ""
        return f"{'moved' if action.get('moved') else 'copied'} to {names.uri(bucket, name)}{refused}"
    if policy == "replace":
        return f"replacing the stored instance in {action.get('batch')}"
    return "tagged"
