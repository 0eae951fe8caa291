"""``backfill gs://BUCKET/PREFIX``: import objects already in the bucket, as the function would.

Same rules, same batching, same result messages; as few import calls as the
wildcard rules allow (see :mod:`handlers.cli.backfill_plan`). Safe to
interrupt and run again: one-call batches have deterministic ids, staged
objects have claims. Printed names follow ``results.object_names``, except in
``--dry-run``, whose purpose is to show the operator their own objects.
"""

from __future__ import annotations

import argparse
import math

from handlers.batch import layout
from handlers.batch.intake import DUPLICATE
from handlers.batch.results import SUCCEEDED
from handlers.cli import backfill_run
from handlers.cli.arguments import duration
from handlers.cli.backfill_plan import Plan, SourceObject, make_plan
from handlers.cli.backfill_run import EARLIER, NEW, NOT_ADMITTED, RESUMED, Tally
from handlers.cli.context import Context
from handlers.cli.environment import PUBSUB, STORAGE, require
from handlers.cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, CliError
from handlers.cli.terminal import Column, Progress, Table, count
from handlers.config import Config, Rule
from handlers.privacy import NamePolicy
from handlers.wildcard import WILDCARD_CHARS, split_gcs_uri

SHOWN_NAMES = 5


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "backfill", help="import objects already in a bucket, with the function's rules and batching",
        description="Import the objects under gs://BUCKET/PREFIX that match the rules, with the same batching and "
                    "result messages as the function. A rule's objects are imported in one call from the source "
                    "when its pattern narrowed to the prefix covers exactly them; otherwise through staging. "
                    "Safe to interrupt and run again: nothing is imported twice.")
    parser.add_argument("uri", metavar="gs://BUCKET/PREFIX", help="where to look (a folder ends with '/')")
    parser.add_argument("--rule", metavar="NAME", help="import only what this rule matches")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would be imported and how; only the bucket is listed: nothing is written, "
                             "published or imported")
    parser.add_argument("--no-wait", action="store_true", help="return once admitted; follow results with `tail`")
    parser.add_argument("--timeout", type=duration, metavar="DURATION",
                        help="stop waiting after this long (90s, 10m or seconds; the batches go on; run again to "
                             "keep waiting)")
    parser.set_defaults(run=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    config = ctx.config
    bucket, prefix = parse_prefix(args.uri)
    only = _rule(config, args.rule)
    if bucket not in config.buckets:
        raise CliError(f"bucket {bucket} is not watched by any rule of {config.path} "
                       f"(watched: {', '.join(sorted(config.buckets))}): nothing there would be imported")
    require(*((STORAGE,) if args.dry_run else (STORAGE, PUBSUB)))
    plan = make_plan(config, bucket, prefix, list_objects(bucket, prefix), only)
    if args.dry_run:
        ctx.out.write(render_dry_run(config, plan))
        return 0
    ctx.out.write(render_plan(config, plan, config.names))
    if not plan.groups:
        ctx.say("nothing to import")
        return 0
    tally = Tally()
    try:
        _admit(ctx, plan, tally)
        if args.no_wait:
            ctx.out.write(render_admitted(tally))
            return 0 if NOT_ADMITTED not in tally.skipped else EXIT_FAILURE
        keys = sorted(tally.batches)
        with Progress(ctx.err, "batches done", len(keys)) as progress:
            results = backfill_run.wait_for_batches(ctx.runtime, keys, progress, args.timeout)
            progress.finish()
    except KeyboardInterrupt:
        ctx.note(stopped("interrupted", plan, tally))
        return EXIT_INTERRUPTED
    except Exception:
        ctx.note(stopped("stopped by the error below", plan, tally))
        raise
    render_summary(tally, results).render(ctx.out)
    ctx.out.write(render_totals(tally, results))
    complete = len(results) == len(tally.batches) and NOT_ADMITTED not in tally.skipped
    all_ok = all(record.get("result", {}).get("outcome", SUCCEEDED) == SUCCEEDED for record in results.values())
    return 0 if complete and all_ok else EXIT_FAILURE


def parse_prefix(uri: str) -> tuple[str, str]:
    """``gs://BUCKET[/PREFIX]`` -> (bucket, prefix); a prefix has no wildcard."""
    bucket, prefix = split_gcs_uri(uri if "/" in uri.removeprefix("gs://") else uri + "/")
    if any(char in WILDCARD_CHARS for char in prefix):
        raise CliError(f"{uri!r} has a wildcard: backfill takes a prefix such as gs://{bucket}/studies/ "
                       "(the rules decide what matches; --rule picks one)")
    return bucket, prefix


def _rule(config: Config, name: str | None) -> Rule | None:
    if name is None:
        return None
    rule = config.rule_named(name)
    if rule is None:
        raise CliError(f"rule {name!r} is not in {config.path} (rules: {', '.join(r.name for r in config.rules)})")
    return rule


def list_objects(bucket: str, prefix: str) -> list[SourceObject]:
    """Every object generation under the prefix."""
    from google.api_core import exceptions

    from handlers.clients.storage import storage_client

    try:
        return [SourceObject(blob.name, str(blob.generation))
                for blob in storage_client().list_blobs(bucket, prefix=prefix or None)]
    except exceptions.NotFound:
        raise CliError(f"bucket gs://{bucket} does not exist or is not visible: check the URI") from None


def _admit(ctx: Context, plan: Plan, tally: Tally) -> None:
    if any(group.source is not None for group in plan.groups):
        backfill_run.wait_for_sweep(ctx.runtime, ctx.note)
    for group in plan.groups:
        if group.source is not None:
            status = backfill_run.submit_exact(ctx.runtime, plan, group, tally)
            what = {NEW: "submitted as one import", RESUMED: "in an unfinished batch of an earlier run: resumed",
                    EARLIER: "imported by an earlier run"}[status]
            ctx.note(f"rule {group.rule.name}: {count(len(group.objects), 'object')} {what}")
        else:
            with Progress(ctx.err, f"rule {group.rule.name}: admitted", len(group.objects)) as progress:
                backfill_run.admit_staged(ctx.runtime, plan, group, tally, progress)
                progress.finish()


def _names(policy: NamePolicy, bucket: str, names: list[str]) -> str:
    shown = ", ".join(policy.uri(bucket, name) for name in names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")


def render_plan(config: Config, plan: Plan, policy: NamePolicy) -> str:
    """What will be imported, per rule, and what is skipped (names per ``policy``)."""
    lines = [f"gs://{plan.bucket}/{plan.prefix}: {count(plan.listed, 'object')} listed, {plan.objects} to import"]
    for group in plan.groups:
        head = f"  rule {group.rule.name} -> store {group.rule.store_alias}: {count(len(group.objects), 'object')}"
        if group.source is not None:
            lines.append(f"{head} in one import call of {group.source.uri}")
        else:
            calls = math.ceil(len(group.objects) / config.batching.max_objects)
            lines.append(f"{head} through staging, about {count(calls, 'import call')} ({group.staged_because})")
    for reason, names in plan.skipped.items():
        lines.append(f"  skipped {count(len(names), 'object')}: {reason}: {_names(policy, plan.bucket, names)}")
    return "\n".join(lines) + "\n"


def render_dry_run(config: Config, plan: Plan) -> str:
    """Every object and the URI it would be imported under; names as they are."""
    lines = ["dry run: nothing is written, published or imported", render_plan(config, plan, NamePolicy()).rstrip()]
    for group in plan.groups:
        if group.source is not None:
            lines.append(f"{group.source.uri}  (rule {group.rule.name}, one call, into {group.rule.store}):")
        else:
            uri = layout.import_uri(config.state_bucket, group.rule.name, "BATCH")
            lines.append(f"{uri}  (rule {group.rule.name}, staged, into {group.rule.store}; "
                         "BATCH is assigned as each object is admitted):")
        lines += [f"  gs://{plan.bucket}/{item.name}" for item in group.objects]
    for reason, names in plan.skipped.items():
        lines += [f"not imported: gs://{plan.bucket}/{name}: {reason}" for name in names]
    return "\n".join(lines) + "\n"


def render_admitted(tally: Tally) -> str:
    lines = [f"admitted {count(tally.admitted, 'object')} into {count(len(tally.batches), 'batch', 'batches')}:"]
    lines += [f"  {rule}  {batch}  ({how})" for (rule, batch), how in sorted(tally.batches.items())]
    lines.append("each batch publishes its result when imported: follow them with `python -m handlers tail`")
    return "\n".join(lines) + "\n"


SUMMARY_COLUMNS = (Column("rule"), Column("batch"), Column("outcome"), Column("ok", "right"),
                   Column("failed", "right"), Column("objects", "right"), Column("operation"), Column("note"))


def render_summary(tally: Tally, results: dict[tuple[str, str], dict]) -> Table:
    """Per batch: outcome, counters, operation (a table on a terminal, a line each otherwise)."""
    table = Table(SUMMARY_COLUMNS, title="results (one import call per batch):")
    for key, how in sorted(tally.batches.items()):
        rule, batch = key
        record = results.get(key)
        if record is None:
            table.add([rule, batch, "running", "", "", "", "", "still running"], plain=f"  {rule}  {batch}  still running")
            continue
        result = record.get("result")
        if result is None:
            gone = len(record.get("skipped") or [])
            why = f"every object ({gone}) was deleted or overwritten before import" if gone else "the batch was sealed empty"
            table.add([rule, batch, "-", "", "", "", "", f"nothing imported ({why})"],
                      plain=f"  {rule}  {batch}  nothing imported ({why})")
            continue
        counter = result["counter"]
        note = {EARLIER: "imported before this run", RESUMED: "resumed"}.get(how, "")
        gone = len(result.get("skipped") or [])
        skipped = f", {gone} deleted or overwritten before import" if gone else ""
        plain = (f"  {rule}  {batch}  {result['outcome']}  {counter['success']} ok, "
                 f"{counter['failure']} failed, {count(result['objectCount'], 'object')}{skipped}  "
                 f"operation {result['operation'] or '-'}{f'  ({note})' if note else ''}")
        notes = ", ".join(filter(None, [skipped.removeprefix(", "), note]))
        table.add([rule, batch, result["outcome"], counter["success"], counter["failure"], result["objectCount"],
                   result["operation"] or "-", notes], plain=plain, failed=result["outcome"] != SUCCEEDED)
    return table


def render_totals(tally: Tally, results: dict[tuple[str, str], dict]) -> str:
    """Totals of this run, and anything skipped or still running."""
    lines = []
    success = failure = 0
    failed_rules = set()
    for (rule, _), record in results.items():
        result = record.get("result")
        if result is not None:
            success += result["counter"]["success"]
            failure += result["counter"]["failure"]
            if result["counter"]["failure"]:
                failed_rules.add(rule)
    earlier = sum(1 for how in tally.batches.values() if how == EARLIER)
    lines.append(f"total: {count(len(tally.batches) - earlier, 'import call')} by this run "
                 f"({count(earlier, 'batch', 'batches')} from before); instances in these batches: {success} imported, "
                 f"{failure} failed; {count(tally.verdicts[DUPLICATE], 'object')} already covered before this run")
    if failure:
        only = f" --rule {next(iter(failed_rules))}" if len(failed_rules) == 1 else ""
        lines.append(f"failed files and why: `python -m handlers failures{only}` "
                     f"(then `python -m handlers retry{only}` once the cause is fixed)")
    for reason, names in tally.skipped.items():
        lines.append(f"skipped {count(len(names), 'object')}: {reason}")
    pending = len(tally.batches) - len(results)
    if pending:
        lines.append(f"{count(pending, 'batch', 'batches')} still running: run the same command again to keep waiting "
                     "(nothing is imported twice)")
    return "\n".join(lines) + "\n"


def stopped(why: str, plan: Plan, tally: Tally) -> str:
    """What a run cut short has done, and how to finish it."""
    return (f"{why}: {tally.admitted} of {count(plan.objects, 'object')} admitted into "
            f"{count(len(tally.batches), 'batch', 'batches')}; "
            "admitted objects are imported by the function and reported on the results topic. "
            "Run the same command again to import the rest: nothing is imported twice.")
