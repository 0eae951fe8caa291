"""``tail``: print import, export and reconcile results from a Pub/Sub subscription, one line each, and ack them.

Under an import's line, its failed files, one line each (kind, object, reason;
red on a terminal). Names are printed as the messages carry them, so
``results.object_names: hashed`` shows hashes here too; ``--json`` prints the
messages as published.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from typing import Any, Mapping

from handlers.batch.results import SUCCEEDED
from handlers.cli.arguments import duration, positive_int
from handlers.cli.context import Context
from handlers.cli.environment import PUBSUB, require
from handlers.cli.errors import CliError
from handlers.cli.terminal import Column, Table
from handlers.exports.job import EXPORT_SCHEMA
from handlers.reconcile.report import SCHEMA as RECONCILE_SCHEMA

PULL_SECONDS = 5.0
MAX_PULL = 100
EMPTY_PAUSE_SECONDS = 0.5


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "tail", help="print result messages as they arrive, failures highlighted",
        description="Pull dicom-import-result/v1, dicom-export-result/v1 and dicom-reconcile-result/v1 messages "
                    "(imports, exports, reconcile sweeps), print one line each "
                    "(failures in red on a terminal) and acknowledge them. Ctrl-C stops.")
    parser.add_argument("--subscription", metavar="NAME",
                        help="subscription name or projects/P/subscriptions/NAME (default: $RESULTS_SUBSCRIPTION)")
    parser.add_argument("--max-messages", type=positive_int, metavar="N", help="stop after N messages")
    parser.add_argument("--timeout", type=duration, metavar="DURATION",
                        help="stop after this long without a message (90s, 10m or seconds)")
    parser.add_argument("--json", action="store_true", help="one JSON object per message")
    parser.set_defaults(run=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    subscription = subscription_path(args.subscription or os.environ.get("RESULTS_SUBSCRIPTION", ""))
    require(PUBSUB)
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    printed = 0
    last_message = time.monotonic()
    try:
        while args.max_messages is None or printed < args.max_messages:
            idle = time.monotonic() - last_message
            if args.timeout is not None and idle >= args.timeout:
                break
            wait = PULL_SECONDS if args.timeout is None else max(0.1, min(PULL_SECONDS, args.timeout - idle))
            wanted = MAX_PULL if args.max_messages is None else min(MAX_PULL, args.max_messages - printed)
            try:
                response = subscriber.pull(request={"subscription": subscription, "max_messages": wanted},
                                           timeout=wait)
            except exceptions.DeadlineExceeded:
                continue
            except exceptions.NotFound:
                raise CliError(f"subscription {subscription} does not exist: create it on the results topic, "
                               "or pass --subscription") from None
            received = response.received_messages
            if not received:
                time.sleep(EMPTY_PAUSE_SECONDS)
                continue
            if args.json:
                for item in received:
                    ctx.say(render_json(item.message))
            else:
                render_table([item.message for item in received]).render(ctx.out, header=printed == 0)
            subscriber.acknowledge(request={"subscription": subscription,
                                            "ack_ids": [item.ack_id for item in received]})
            printed += len(received)
            last_message = time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        subscriber.close()
    return 0


def subscription_path(name: str) -> str:
    """A full subscription name; a short one is completed with ``GOOGLE_CLOUD_PROJECT``."""
    if not name:
        raise CliError("no subscription: pass --subscription NAME, or set RESULTS_SUBSCRIPTION (--local sets it; "
                       "in production the operators' subscription deploy.sh creates, dicom-import-results-ops "
                       "by default)")
    if name.startswith("projects/"):
        return name
    project = os.environ.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        raise CliError(f"subscription {name!r} is a short name: give projects/PROJECT/subscriptions/{name}, "
                       "or set GOOGLE_CLOUD_PROJECT")
    return f"projects/{project}/subscriptions/{name}"


def _data(message: Any) -> Mapping[str, Any] | None:
    try:
        data = json.loads(message.data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _time(message: Any) -> str:
    published = message.publish_time
    if isinstance(published, datetime):
        return published.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return "-"


def _short(name: str | None, keep: int) -> str:
    """The last ``keep`` segments of a resource name (``local-dataset/dicomStores/local-store`` -> ...)."""
    return "/".join(name.split("/")[-keep:]) if name else "-"


# min_width keeps the tables of successive pulls aligned under the first one's header.
COLUMNS = (Column("published", min_width=20), Column("kind", min_width=6), Column("outcome", min_width=9),
           Column("ok", "right", 5), Column("failed", "right", 6), Column("rule", min_width=10),
           Column("store", min_width=20), Column("batch / request", min_width=26), Column("operation", min_width=19),
           Column("error"))
ERROR_CHARS = 200


def render_table(messages: list[Any]) -> Table:
    """One row per message: a table on a terminal (failures in red), :func:`render_line` otherwise."""
    table = Table(COLUMNS)
    for message in messages:
        data = _result(message)
        sweep = _sweep(message)
        if sweep is not None:
            totals = sweep["totals"]
            table.add([_time(message), "reconcile", sweep["outcome"], "", "", "", "", sweep["sweep"], "",
                       f"{totals['admitted']} admitted of {totals['matched']} matched"],
                      plain=render_line(message), failed=sweep["outcome"] != SUCCEEDED)
            continue
        if data is None:
            table.add([_time(message), "-", "-", "", "", "", "", "", "", render_line(message)],
                      plain=render_line(message))
            continue
        export = data.get("schema") == EXPORT_SCHEMA
        table.add([_time(message), "export" if export else "import", data["outcome"], data["counter"]["success"],
                   data["counter"]["failure"], "" if export else data.get("rule"), _short(data.get("store"), 3),
                   data.get("requestId") if export else data.get("batch"), _short(data.get("operation"), 1),
                   _error(data)], plain=render_line(message), failed=data["outcome"] != SUCCEEDED)
        for line in failure_lines(data):
            table.add(["", "", "", "", "", "", "", "", "", line.strip()], plain=line, failed=True)
    return table


def failure_lines(data: Mapping[str, Any]) -> list[str]:
    """The failed files of an import result, one indented line each, then what the message does not list."""
    lines = [f"    failed  {item.get('kind')}  {item.get('uri')}  generation {item.get('generation')}  "
             f"{str((item.get('error') or {}).get('message', ''))[:ERROR_CHARS]}"
             for item in data.get("failures") or []]
    more = int(data.get("failuresListed") or 0) - len(data.get("failures") or [])
    if more > 0:
        lines.append(f"    ... and {more} more: {data.get('failuresManifest')}")
    if data.get("failuresIncomplete"):
        lines.append(f"    not all named: {data['failuresIncomplete']}")
    return lines


def _result(message: Any) -> Mapping[str, Any] | None:
    """The message's data if it is an import or export result."""
    data = _data(message)
    return data if data is not None and "outcome" in data and "counter" in data else None


def _sweep(message: Any) -> Mapping[str, Any] | None:
    """The message's data if it is a reconcile sweep's result."""
    data = _data(message)
    return data if data is not None and data.get("schema") == RECONCILE_SCHEMA else None


def _error(data: Mapping[str, Any]) -> str:
    if data["outcome"] == SUCCEEDED or not data.get("error"):
        return ""
    return str(data["error"].get("message", ""))[:ERROR_CHARS]


def render_line(message: Any) -> str:
    """``TIME  KIND  OUTCOME  COUNTS  rule/store  batch or request  operation  error``: the plain output."""
    data = _result(message)
    sweep = _sweep(message)
    if sweep is not None:
        totals = sweep["totals"]
        return (f"{_time(message)}  reconcile  {sweep['outcome']:<9}  {totals['admitted']} admitted of "
                f"{totals['matched']} matched ({totals['covered']} covered)  sweep {sweep['sweep']}")
    if data is None:
        return f"{_time(message)}  message {message.message_id}: not a DICOM result ({dict(message.attributes)})"
    counter = data["counter"]
    parts = [_time(message)]
    if data.get("schema") == EXPORT_SCHEMA:
        parts += ["export", f"{data['outcome']:<9}", f"{counter['success']} ok {counter['failure']} failed",
                  f"store {_short(data.get('store'), 3)}", f"request {data.get('requestId')}"]
    else:
        parts += ["import", f"{data['outcome']:<9}", f"{counter['success']} ok {counter['failure']} failed",
                  f"rule {data.get('rule')}", f"store {_short(data.get('store'), 3)}", f"batch {data.get('batch')}"]
    parts.append(f"operation {_short(data.get('operation'), 1)}")
    if _error(data):
        parts.append(f"error: {_error(data)}")
    return "  ".join(parts)


def render_json(message: Any) -> str:
    return json.dumps({"messageId": message.message_id, "publishTime": _time(message),
                       "attributes": dict(message.attributes), "data": _data(message)})
