"""``explain gs://BUCKET/OBJECT``: what the function would do with one object, without any call.

The object's own name is shown as given, whatever ``results.object_names`` says:
the operator asked about it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from handlers.batch import layout
from handlers.cli.context import Context
from handlers.cli.errors import CliError
from handlers.config import Batching, Config, Rule
from handlers.wildcard import narrow_to_prefix, split_gcs_uri

BATCH_ASSIGNED = ("BATCH is assigned when the object arrives: the id of the rule's batch that is open "
                  "when its event is admitted (a new one if none is open)")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "explain", help="which rule an object matches, its store, batch and import URI",
        description="Explain what the function does with one object: the rule that matches it (or why none "
                    "does, or which ignore pattern hides it), the target store, the batch key and the import URI. "
                    "Reads only the config: no call is made.")
    parser.add_argument("uri", metavar="gs://BUCKET/OBJECT", help="the object")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    bucket, name = split_gcs_uri(args.uri)
    if not name:
        raise CliError(f"{args.uri!r} names no object: give the full object name, e.g. gs://{bucket}/dir/file.dcm")
    explanation = explain(ctx.config, bucket, name)
    ctx.out.write(json.dumps(explanation, indent=2) + "\n" if args.json else render(explanation))
    return 0


def explain(config: Config, bucket: str, name: str) -> dict[str, Any]:
    """The explanation as a JSON-ready dict (the ``--json`` output)."""
    route = config.route(bucket, name)
    result: dict[str, Any] = {"object": f"gs://{bucket}/{name}", "imported": route.rule is not None}
    if route.rule is None:
        result["reason"] = route.reason
        result["ignoredBy"] = route.ignored_by.uri if route.ignored_by else None
        if route.reason == "no rule matches":
            result["rulesTried"] = [{"name": r.name, "match": r.pattern.uri} for r in config.rules
                                    if r.pattern.bucket == bucket]
        elif bucket not in config.buckets:
            result["watchedBuckets"] = sorted(config.buckets)
        return result
    rule = route.rule
    result.update({
        "rule": {"name": rule.name, "position": config.rules.index(rule) + 1, "match": rule.pattern.uri,
                 "ignore": [p.uri for p in rule.ignore], "blobStorageClass": rule.blob_storage_class},
        "store": rule.store,
        "storeAlias": rule.store_alias,
        "batchKey": rule.name,
        "batching": {"maxObjects": config.batching.max_objects,
                     "maxWaitSeconds": config.batching.max_wait_seconds,
                     "sealAfterQuietSeconds": config.batching.seal_after_quiet_seconds},
        "importUri": layout.import_uri(config.state_bucket, rule.name, "BATCH"),
        "batchAssigned": BATCH_ASSIGNED,
        "backfill": _backfill(config, rule, bucket, name),
    })
    return result


def _backfill(config: Config, rule: Rule, bucket: str, name: str) -> dict[str, Any]:
    """How ``backfill`` of the object's folder would import it."""
    folder = name[: name.rfind("/") + 1]
    prefix = f"gs://{bucket}/{folder}"
    if config.names.hashed:
        return {"prefix": prefix, "sourceUri": None,
                "note": "through staging: with object_names: hashed, source prefixes stay out of result messages"}
    narrowed = narrow_to_prefix(rule.pattern, folder)
    if narrowed is None:
        return {"prefix": prefix, "sourceUri": None,
                "note": "through staging: no single wildcard covers exactly this rule's objects under the prefix"}
    return {"prefix": prefix, "sourceUri": narrowed.uri,
            "note": "one import call from the source if every object it covers goes to this rule (none ignored, "
                    "none taken by an earlier rule); otherwise through staging"}


def render(explanation: dict[str, Any]) -> str:
    lines = [explanation["object"]]
    if not explanation["imported"]:
        lines.append(f"  imported     no: {explanation['reason']}")
        for tried in explanation.get("rulesTried", []):
            lines.append(f"  rule tried   {tried['name']}: {tried['match']}")
        if "watchedBuckets" in explanation:
            lines.append(f"  watched      {', '.join(explanation['watchedBuckets'])}")
        return "\n".join(lines) + "\n"
    rule, batching, backfill = explanation["rule"], explanation["batching"], explanation["backfill"]
    sealing = Batching(batching["maxObjects"], batching["maxWaitSeconds"], batching["sealAfterQuietSeconds"]).sealing()
    lines += [
        f"  imported     yes, by rule {rule['name']} (rule {rule['position']}: {rule['match']})",
        f"  store        {explanation['storeAlias']} -> {explanation['store']}",
        f"  batch key    rule {explanation['batchKey']}: its objects share one open batch, {sealing}",
        f"  import URI   {explanation['importUri']}",
        f"               {explanation['batchAssigned']}",
        f"  backfill     {backfill['prefix']}: " + (f"{backfill['sourceUri']}, " if backfill["sourceUri"] else "")
        + backfill["note"],
    ]
    return "\n".join(lines) + "\n"
