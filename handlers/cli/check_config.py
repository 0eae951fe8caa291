"""``check-config [PATH]``: validate a config file and show what it does."""

from __future__ import annotations

import argparse
import os

from handlers.cli import kms
from handlers.cli.context import Context
from handlers.cli.environment import STORAGE, require
from handlers.cli.errors import CliError
from handlers.config import QUARANTINE, REPLACE, TAG, Config, Rule, load


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "check-config", help="validate config.yaml and print its rules, stores, batching and topics",
        description="Validate a config file (${ENV} interpolated from the environment) and print what it does. "
                    "Exit 0 when valid; otherwise every problem as PATH:LINE: message, exit 1.")
    parser.add_argument("path", nargs="?", help="the config file (default: --config)")
    parser.add_argument("--kms-key", metavar="KEY", default=None,
                        help="also check that this Cloud KMS key (default: $KMS_KEY, as for deploy.sh) can encrypt "
                             "the state bucket and the watched buckets: it asks Cloud Storage for their locations")
    parser.add_argument("--policies", action="store_true",
                        help="print, instead of the description, what the rules' policies need granted as KEY=VALUE "
                             "lines (deploy.sh reads them): tag, move and replace (true or false), then "
                             "quarantine=BUCKET for each bucket failed files are copied to")
    parser.set_defaults(run=run)


def run(ctx: Context, args: argparse.Namespace) -> int:
    path = args.path or ctx.config_path
    config = load(path)
    key = args.kms_key or os.environ.get("KMS_KEY") or None
    if key is not None:
        kms.key_location(key)  # a malformed key is a usage error, before any call
        require(STORAGE)
        buckets = {config.state_bucket, *config.buckets}
        found = kms.problems(key, buckets, kms.bucket_location)
        if found:
            raise CliError("; ".join(found))
    if args.policies:
        ctx.out.write(policies(config))
        return 0
    ctx.out.write(render(config))
    if key is not None:
        ctx.out.write(f"encryption key: {key} fits {', '.join(f'gs://{b}' for b in sorted(buckets))}\n")
    return 0


def _destinations(config: Config) -> str:
    """exports.destinations, and where the list comes from."""
    folders = ", ".join(config.exports.destinations) or "none (every export is refused)"
    if config.exports.default:
        return f"{folders} (the default: gs://$EXPORT_BUCKET/; set exports.destinations to change it)"
    return folders


def render(config: Config) -> str:
    """The config as an operator reads it: rules in matching order, with full store names."""
    lines = [f"{config.path}: valid", "", "stores:"]
    width = max(len(alias) for alias in config.stores)
    lines += [f"  {alias:<{width}}  {name}" for alias, name in config.stores.items()]
    lines += ["", "rules (the first that matches wins):"]
    for number, rule in enumerate(config.rules, start=1):
        lines.append(f"  {number}. {rule.name}")
        lines.append(f"       match   {rule.pattern.uri}")
        lines.append(f"       store   {rule.store_alias} -> {rule.store}")
        for pattern in rule.ignore:
            lines.append(f"       ignore  {pattern.uri}")
        if rule.blob_storage_class:
            lines.append(f"       blob storage class  {rule.blob_storage_class}")
        lines += _policies(rule)
    lines += ["", "ignored by every rule:"]
    lines += [f"  {pattern.uri}" for pattern in config.ignore] or ["  (nothing)"]
    lines += [
        "",
        f"watched buckets: {', '.join(sorted(config.buckets))}",
        f"batching: one open batch per rule, {config.batching.sealing()}",
        f"state bucket: gs://{config.state_bucket}",
        f"results topic: {config.results_topic} (object names: {config.names.mode})",
        f"follow-up topic: {config.followup_topic} (operations followed for {config.followup_deadline_hours:g} h)",
        f"export destinations: {_destinations(config)}",
    ]
    return "\n".join(lines) + "\n"


def policies(config: Config) -> str:
    """The policies the rules use that need IAM grants, as ``KEY=VALUE`` lines, ``${...}`` already substituted:
    ``tag``, ``move``, ``replace`` (``true``/``false``), then ``quarantine=BUCKET`` per bucket, sorted."""
    failures = [rule.on_failure for rule in config.rules]
    used = {
        "tag": any(policy.action == TAG for policy in failures),
        "move": any(policy.action == QUARANTINE and policy.move for policy in failures),
        "replace": any(rule.on_conflict == REPLACE for rule in config.rules),
    }
    lines = [f"{name}={str(value).lower()}" for name, value in used.items()]
    lines += [f"quarantine={bucket}" for bucket in sorted({p.bucket for p in failures if p.action == QUARANTINE})]
    return "\n".join(lines) + "\n"


def _policies(rule: Rule) -> list[str]:
    """What happens to a failed file beyond its result, when the rule says more than the defaults."""
    lines = []
    policy = rule.on_failure
    if policy.action == TAG:
        lines.append("       on failure   tag the object (metadata dicom-import-error, dicom-import-batch)")
    elif policy.action == QUARANTINE:
        then = ", then delete the failed generation" if policy.move else ""
        lines.append(f"       on failure   quarantine: copy to {policy.destination}NAME (NAME.gGENERATION.EXT if "
                     f"taken){then}")
    if rule.on_conflict == REPLACE:
        lines.append("       on conflict  replace: delete the stored instance, import the file again")
    return lines
