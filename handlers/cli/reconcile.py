"""``reconcile``: find the objects no event announced and admit them, as the scheduled ``on_reconcile`` does.

One sweep (docs/reconcile.md): each rule's watched prefix is listed, the objects
created in the window that no claim or one-call backfill covers go through the
function's intake; one ``dicom-reconcile-result/v1`` message is published. An
interrupted sweep resumes where it stopped when run again; ``--since`` never
replaces it (the command says how to finish it first).
"""

from __future__ import annotations

import argparse
import json

from handlers.cli.arguments import duration as any_duration, unbounded_duration
from handlers.cli.context import Context
from handlers.cli.environment import PUBSUB, STORAGE, require
from handlers.cli.errors import EXIT_FAILURE, CliError
from handlers.cli.terminal import Column, Table, count
from handlers.config import MAX_RECONCILE_WINDOW_HOURS
from handlers.reconcile.progress import SweepBusy, UnfinishedSweep
from handlers.reconcile.report import CHECKPOINT_KEPT, UNSWEPT_ADVICE
from handlers.retry import Deadline, RetryLater

UNLIMITED_SECONDS = 7 * 24 * 3600.0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "reconcile", help="admit the objects whose events were lost (what the hourly on_reconcile does)",
        description="List each rule's watched prefix, take the objects created since the last sweep (minus an "
                    "overlap), and admit through the function's intake every matched object that no claim or "
                    "one-call backfill covers. Publishes one dicom-reconcile-result/v1 message. An interrupted "
                    "sweep resumes when run again.")
    parser.add_argument("--since", metavar="DURATION", type=duration,
                        help="look at objects created this long ago or later (90m, 6h, 2d; at most 29d) instead "
                             "of since the last sweep; the checkpoint moves only if this reaches back to it")
    parser.add_argument("--timeout", type=any_duration, metavar="DURATION",
                        help="stop after this long (90s, 10m or seconds; default: no limit); at least one page of "
                             "1,000 objects is swept, and the next run resumes")
    parser.add_argument("--json", action="store_true", help="print the result message as JSON")
    parser.set_defaults(run=run)


def duration(text: str) -> float:
    """``90m``, ``6h``, ``2d``, ``3600`` (seconds) -> seconds; at most the claims' lifetime minus a day."""
    seconds = unbounded_duration(text)
    if not 0 < seconds <= MAX_RECONCILE_WINDOW_HOURS * 3600:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give more than 0 and at most {MAX_RECONCILE_WINDOW_HOURS // 24}d (claims are deleted "
            "after 30 days, so an older object's claim may be gone and it would be imported again)")
    return seconds


def run(ctx: Context, args: argparse.Namespace) -> int:
    require(STORAGE, PUBSUB)
    sweeper = ctx.runtime.reconciler
    try:
        result = sweeper.run(Deadline(UNLIMITED_SECONDS if args.timeout is None else args.timeout), since=args.since)
    except SweepBusy as exc:
        raise CliError(f"{exc}: it is taken over once idle for 5 minutes; run again later") from None
    except UnfinishedSweep as exc:
        raise CliError(f"{exc}: --since never discards it; finish it first with `python -m handlers reconcile` "
                       "(no --since; the next scheduled sweep does too), then run --since again") from None
    except RetryLater as exc:
        ctx.note(f"stopped: {exc}")
        return EXIT_FAILURE
    if args.json:
        ctx.say(json.dumps(result, indent=2))
        return 0
    table, summary = render(result)
    table.render(ctx.out)
    ctx.out.write(summary)
    return 0


def render(result: dict) -> tuple[Table, str]:
    """A row per rule and the totals, then lines saying what the outcome means."""
    table = Table([Column("rule"), Column("source"), Column("listed", "right"), Column("in window", "right"),
                   Column("matched", "right"), Column("covered", "right"), Column("by backfill", "right"),
                   Column("admitted", "right")],
                  title=f"sweep {result['sweep']}: objects created {result['window']['from']} .. "
                        f"{result['window']['to']}")
    for rule in [*result["rules"], {"rule": "total", "source": "", **result["totals"]}]:
        cells = [rule["rule"], rule["source"], rule["listed"], rule["inWindow"], rule["matched"], rule["covered"],
                 rule["coveredByBackfill"], rule["admitted"]]
        plain = (f"  {rule['rule']}  {rule['source']}".rstrip() + f": listed {rule['listed']}, in window "
                 f"{rule['inWindow']}, matched {rule['matched']}, covered {rule['covered']}, by backfill "
                 f"{rule['coveredByBackfill']}, admitted {rule['admitted']}")
        table.add(cells, plain=plain, failed=bool(rule["admitted"]))
    lines = []
    admitted = result["totals"]["admitted"]
    if admitted:
        batches = sorted({batch for rule in result["rules"] for batch in rule["batches"]})
        lines.append(f"RECOVERED: {count(admitted, 'object')} no event had announced, admitted into "
                     f"{count(len(batches), 'batch', 'batches')}: {', '.join(batches)}")
        lines.append("each batch publishes its import result as usual (python -m handlers tail); "
                     "lost events point at a broken trigger or an expired retention")
    else:
        lines.append("SUCCEEDED: every matched object in the window was already covered")
    return table, "\n".join([*lines, *checkpoint_lines(result.get("checkpoint"))]) + "\n"


def checkpoint_lines(checkpoint: dict | None) -> list[str]:
    """What the result's ``checkpoint`` says, when the sweep did not move it as usual."""
    if checkpoint is None:
        return []
    if not checkpoint["moved"]:
        return [f"checkpoint not moved: {CHECKPOINT_KEPT}"]
    unswept = checkpoint["unswept"]
    return [f"NOT SWEPT: objects created {unswept['from']} .. {unswept['to']} (the checkpoint moved past them): "
            f"{UNSWEPT_ADVICE}"]
