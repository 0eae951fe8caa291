"""Which listed objects ``backfill`` imports, and how: one call from the source, or through staging.

A rule's objects under the prefix are imported in ONE call of the rule's pattern
narrowed to the prefix (``narrow_to_prefix``) when that pattern covers exactly
them: every listed object it matches routes to that rule (no ignore pattern
hides one, no earlier rule takes one). Otherwise each object goes through the
function's intake (staging copies, batches of ``max_objects``). Pure: no call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from handlers.batch.layout import EXACT_BATCH_PREFIX
from handlers.config import Config, Rule
from handlers.wildcard import GcsPattern, narrow_to_prefix


@dataclass(frozen=True)
class SourceObject:
    """One listed object generation."""

    name: str
    generation: str


@dataclass
class Group:
    """A rule's objects under the prefix; ``source`` set when they are imported in one call from the source."""

    rule: Rule
    objects: list[SourceObject] = field(default_factory=list)
    source: GcsPattern | None = None
    staged_because: str = ""

    def exact_batch_id(self) -> str:
        """Deterministic: the same rule, store, URI and listing give the same batch, so a rerun resumes it."""
        assert self.source is not None
        digest = hashlib.sha256(f"{self.rule.name}\n{self.rule.store}\n{self.source.uri}\n".encode())
        for item in sorted(self.objects, key=lambda o: (o.name, o.generation)):
            digest.update(f"{item.name}#{item.generation}\n".encode())
        return EXACT_BATCH_PREFIX + digest.hexdigest()[:24]


@dataclass
class Plan:
    bucket: str
    prefix: str
    listed: int
    groups: list[Group]
    skipped: dict[str, list[str]]
    """reason -> object names not imported for that reason."""

    @property
    def objects(self) -> int:
        return sum(len(group.objects) for group in self.groups)


def make_plan(config: Config, bucket: str, prefix: str, listing: list[SourceObject], only: Rule | None = None) -> Plan:
    """Route every listed object and choose each rule's import mode."""
    groups: dict[str, Group] = {}
    routed: dict[str, str | None] = {}
    skipped: dict[str, list[str]] = {}
    for item in listing:
        route = config.route(bucket, item.name)
        routed[item.name] = route.rule.name if route.rule else None
        if route.rule is None:
            skipped.setdefault(route.reason, []).append(item.name)
        elif only is not None and route.rule.name != only.name:
            skipped.setdefault(f"goes to rule {route.rule.name!r}, not --rule {only.name}", []).append(item.name)
        else:
            groups.setdefault(route.rule.name, Group(route.rule)).objects.append(item)
    ordered = [groups[rule.name] for rule in config.rules if rule.name in groups]
    for group in ordered:
        _choose_mode(config, group, prefix, routed)
    return Plan(bucket, prefix, len(listing), ordered, skipped)


def _choose_mode(config: Config, group: Group, prefix: str, routed: dict[str, str | None]) -> None:
    if config.names.hashed:
        group.staged_because = "object_names: hashed keeps source prefixes out of result messages"
        return
    if prefix and not prefix.endswith("/"):
        group.staged_because = "the prefix is not a folder (end it with '/' for a one-call import)"
        return
    narrowed = narrow_to_prefix(group.rule.pattern, prefix)
    if narrowed is None:
        group.staged_because = f"no single wildcard covers exactly {group.rule.pattern.uri} under the prefix"
        return
    strangers = [name for name, rule in routed.items()
                 if rule != group.rule.name and narrowed.regex.fullmatch(name)]
    if strangers:
        group.staged_because = (f"{narrowed.uri} also covers {len(strangers)} listed object(s) that are ignored "
                                "or go to another rule")
        return
    group.source = narrowed
