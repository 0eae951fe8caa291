"""``export --store STORE --to gs://BUCKET/DIR``: export instances to Cloud Storage, filtered or whole.

Validated like the Pub/Sub export request (``handlers.exports.job``): UIDs, filter
lines, query, store, destination and MIME type before any call, then paths naming
nothing in the store (a QIDO search each) before anything is written. ``--where``
searches the store page by page and exports what it finds. Runs the export in
this process (``ExportJob.run``), which publishes ``dicom-export-result/v1``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Mapping, TextIO

from handlers.batch.results import SUCCEEDED
from handlers.config import shown_path
from handlers.cli.arguments import positive_int
from handlers.cli.context import Context
from handlers.cli.environment import HEALTHCARE, PUBSUB, STORAGE, require
from handlers.cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, CliError
from handlers.cli.terminal import Progress, count, failure
from handlers.exports.query import LEVELS, Query
from handlers.exports.request import (
    MAX_CHECKED_PATHS,
    ExportRequest,
    check_destination,
    parse_filter_lines,
    resolve_store,
)
from handlers.retry import Deadline, RetryLater

RUN_BUDGET_SECONDS = 300.0
RETRY_PAUSE_SECONDS = 2.0


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export", help="export a DICOM store (or some studies, series, instances) to Cloud Storage",
        description="Export instances to gs://BUCKET/DIR/STUDY/SERIES/INSTANCE.dcm, follow the operation, publish "
                    "dicom-export-result/v1 to the results topic and print it. Refused before any call: bad UIDs, "
                    "bad filter lines, a store or destination the config does not allow (stores, "
                    "exports.destinations), and paths naming nothing in the store. Exit 0 only when SUCCEEDED.")
    parser.add_argument("--store", required=True, help="a store alias from the config (or its full name)")
    parser.add_argument("--to", required=True, metavar="gs://BUCKET/DIR",
                        help="destination folder, inside one of the config's exports.destinations")
    parser.add_argument("--study", action="append", default=[], metavar="UID", help="a study (repeatable)")
    parser.add_argument("--series", action="append", default=[], metavar="STUDY/SERIES", help="a series (repeatable)")
    parser.add_argument("--instance", action="append", default=[], metavar="STUDY/SERIES/INSTANCE",
                        help="an instance (repeatable)")
    parser.add_argument("--filter-file", type=Path, metavar="FILE",
                        help="a local file of /studies/UID[/series/UID[/instances/UID]] lines")
    parser.add_argument("--where", metavar="QUERY",
                        help="QIDO-RS match parameters, e.g. 'ModalitiesInStudy=CT&StudyDate=20260101-20261231': "
                             "export every match (instead of --study/--series/--instance/--filter-file)")
    parser.add_argument("--level", choices=tuple(LEVELS), default="study",
                        help="with --where: search studies (default), series or instances, and list their UIDs")
    parser.add_argument("--page-size", type=positive_int, metavar="N",
                        help="with --where: results per QIDO-RS page (default and maximum: the API's, 5,000 studies "
                             "or series, 50,000 instances)")
    parser.add_argument("--mime-type", help="default: application/dicom; transfer-syntax=*")
    parser.add_argument("--request-id", metavar="ID",
                        help="names the export; run again with the same id and arguments to resume it instead of "
                             "exporting twice (the same id with other arguments is refused)")
    parser.add_argument("--json", action="store_true", help="print the result message as JSON")
    parser.set_defaults(run=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    request = build_request(ctx, args)
    require(STORAGE, PUBSUB, HEALTHCARE)
    if len(request.paths) > MAX_CHECKED_PATHS:
        ctx.note(f"checking the first {MAX_CHECKED_PATHS} of {len(request.paths)} paths against the store; "
                 f"{len(request.paths) - MAX_CHECKED_PATHS} more were not checked")
    try:
        result = follow(ctx, request, args.page_size)
    except KeyboardInterrupt:
        ctx.note(f"interrupted: export {request.request_id} goes on in the Cloud Healthcare API; follow it to its "
                 f"result with the same command and --request-id {request.request_id}")
        return EXIT_INTERRUPTED
    ctx.out.write(json.dumps(result, indent=2) + "\n" if args.json else render(result, ctx))
    return 0 if result["outcome"] == SUCCEEDED else EXIT_FAILURE


def build_request(ctx: Context, args: argparse.Namespace) -> ExportRequest:
    """Everything validated locally: no call yet."""
    filter_lines: list[str] = []
    if args.filter_file is not None:
        try:
            text = args.filter_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise CliError(f"cannot read filter file {args.filter_file} ({reason}): check the path") from None
        filter_lines = parse_filter_lines(text, str(args.filter_file))
        if not filter_lines:
            raise CliError(f"filter file {args.filter_file} has no path: an empty filter would export the whole "
                           "store; drop --filter-file for that")
    if args.where is None and (args.level != "study" or args.page_size is not None):
        raise CliError("--level and --page-size apply to --where: add --where QUERY, or drop them")
    query = Query.parse(args.where, args.level) if args.where is not None else None
    request = ExportRequest.build(
        store=resolve_store(args.store, ctx.config.stores, shown_path(ctx.config.path)), destination=args.to, studies=args.study,
        series=args.series, instances=args.instance, filter_lines=filter_lines, mime_type=args.mime_type,
        request_id=args.request_id, query=query)
    # The export job checks it again before its call (the gate shared with Pub/Sub requests).
    check_destination(request.destination, ctx.config.exports.destinations, shown_path(ctx.config.path))
    return request


def follow(ctx: Context, request: ExportRequest, page_size: int | None = None) -> dict[str, Any]:
    """Run the export job until its result is published (it resumes from its record on each pass).

    A query's search shows its progress: matches found, page after page.
    """
    while True:
        try:
            with SearchProgress(ctx.err, request.query.plural if request.query else "") as on_page:
                return ctx.runtime.exports.run(request, Deadline(RUN_BUDGET_SECONDS), page_size=page_size,
                                               on_page=on_page)
        except RetryLater as exc:
            ctx.note(f"still running: {exc}")
            time.sleep(RETRY_PAUSE_SECONDS)


class SearchProgress:
    """The progress of a query's search (``on_page`` of the export job), shown once the first page is in.

    An export that searches nothing (no query, or a resumed one) shows no bar.
    """

    def __init__(self, stream: TextIO, plural: str) -> None:
        self.stream = stream
        self.label = f"{plural} found"
        self.progress: Progress | None = None

    def __enter__(self) -> "SearchProgress":
        return self

    def __call__(self, found: int, pages: int, last: bool) -> None:
        if self.progress is None:
            self.progress = Progress(self.stream, self.label, None).__enter__()
        self.progress.advance(found - self.progress.done)
        if last:
            self.progress.finish(f"({count(pages, 'page')} searched)")
            self.__exit__()

    def __exit__(self, *exc_info: object) -> None:
        progress, self.progress = self.progress, None
        if progress is not None:
            progress.__exit__(*exc_info)


def _scope(counts: Mapping[str, int]) -> str:
    """``2 studies, 1 series`` (``every instance`` without paths)."""
    singular = {"studies": "study", "series": "series", "instances": "instance"}
    return ", ".join(count(n, singular[level], level) for level, n in counts.items() if n) or "every instance"


def render(result: dict[str, Any], ctx: Context) -> str:
    counter = result["counter"]
    head = f"export {result['outcome']}: {counter['success']} instances exported, {counter['failure']} failed"
    lines = [head if result["outcome"] == SUCCEEDED else failure(head, ctx.out)]
    rows = [("store", result["store"]), ("destination", result["destination"]), ("MIME type", result["mimeType"])]
    if result.get("filter"):
        scope = _scope({level: result["filter"][level] for level in ("studies", "series", "instances")})
        rows.append(("filter", f"{result['filter']['uri']} ({scope})"))
        query = result["filter"].get("query")
        if query:
            rows.append(("query", f"{query['where']} ({query['level']} level, {count(query['matches'], 'match', 'matches')}, "
                                  f"{count(query['pages'], 'page')} searched)"))
    rows += [("operation", result["operation"]), ("request id", result["requestId"])]
    if result.get("error"):
        rows.append(("error", f"{result['error'].get('status', '')} {result['error'].get('message', '')}".strip()))
    rows += [("hint", result.get("hint")), ("logs", result.get("logsUrl"))]
    lines += [f"  {label:<12} {value}" for label, value in rows if value]
    return "\n".join(lines) + "\n"
