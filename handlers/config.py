"""``config.yaml``: load, interpolate ``${ENV}``, validate, and route objects to rules.

Every problem is reported as ``PATH:LINE: what is wrong, and how to fix it``;
all problems of a file are reported at once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Mapping

import yaml

from handlers.privacy import MODES, NamePolicy
from handlers.wildcard import (
    WILDCARD_CHARS,
    GcsPattern,
    PatternSet,
    WildcardError,
    parse_gcs_uri,
    split_gcs_uri,
    validate_bucket,
)

STORE_RE = re.compile(r"projects/[^/\s]+/locations/[^/\s]+/datasets/[^/\s]+/dicomStores/[^/\s]+")
TOPIC_RE = re.compile(r"projects/[^/\s]+/topics/[A-Za-z][\w.~+%-]{2,254}")
RULE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
BLOB_STORAGE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MIN_QUIET_SECONDS = 0.5
# A sweep must not look back as far as the claims' lifetime (30 days, deploy.sh's STATE_RETENTION_DAYS):
# an object whose claim was deleted would be imported again.
MAX_RECONCILE_WINDOW_HOURS = 29 * 24
_TOP_LEVEL = ("stores", "rules", "ignore", "batching", "state", "results", "followup", "exports", "reconcile")
#: The environment variable deploy.sh --export-bucket sets: the default (and only) export destination.
EXPORT_BUCKET_ENV = "EXPORT_BUCKET"
#: The QIDO-RS offset the Cloud Healthcare API accepts at most: a search cannot page further.
MAX_QUERY_RESULTS = 1_000_000
#: The functions' source folder, beside main.py: where config.yaml is by default.
SOURCE_DIR = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """All problems found in one config file, each ``PATH:LINE: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


REPORT, TAG, QUARANTINE = "report", "tag", "quarantine"
KEEP, REPLACE = "keep", "replace"
ON_CONFLICT = (KEEP, REPLACE)


@dataclass(frozen=True)
class FailurePolicy:
    """A rule's ``on_failure``: what happens to a file the import failed (besides the result naming it)."""

    action: str = REPORT
    bucket: str = ""
    prefix: str = ""
    """quarantine: the copy goes to ``gs://bucket/prefix`` + the object's name (prefix '' or ending in '/')."""
    move: bool = False
    """quarantine: then delete the failed generation from where it was dropped."""
    line: int = field(default=0, compare=False)

    @property
    def destination(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: GcsPattern
    store: str
    store_alias: str
    ignore: tuple[GcsPattern, ...] = ()
    blob_storage_class: str | None = None
    line: int = 0
    on_failure: FailurePolicy = FailurePolicy()
    on_conflict: str = KEEP


@dataclass(frozen=True)
class Batching:
    max_objects: int = 500
    max_wait_seconds: float = 10.0
    seal_after_quiet_seconds: float = 2.0
    """Seal once no member has joined for this long (0: off); see docs/design.md, "Window"."""

    def sealing(self) -> str:
        """When an open batch is sealed, in words (check-config and explain print it)."""
        quiet = (f"after {self.seal_after_quiet_seconds:g} s without a new object, "
                 if self.seal_after_quiet_seconds else "")
        return f"sealed at {self.max_objects} objects, {quiet}or {self.max_wait_seconds:g} s after its first object"


@dataclass(frozen=True)
class Exports:
    """Where exports may be written: ``gs://BUCKET/PREFIX/`` folders (``exports.destinations``).

    ``default`` is True when the list comes from ``$EXPORT_BUCKET`` because the config names none.
    """

    destinations: tuple[str, ...] = ()
    default: bool = False
    #: An export by query refuses a search matching more than this many studies, series or instances.
    max_query_results: int = 10_000


@dataclass(frozen=True)
class Reconcile:
    """The sweep that finds objects no event announced (docs/reconcile.md)."""

    overlap_minutes: float = 10.0
    """Each sweep starts this long before the end of the previous one."""
    settle_seconds: float = 120.0
    """Objects younger than this are left to their events (and to the next sweep)."""
    first_window_hours: float = 24.0
    """How far back the very first sweep looks."""


@dataclass(frozen=True)
class Route:
    """Where an object goes: the rule that matched, or why none applies."""

    rule: Rule | None
    ignored_by: GcsPattern | None = None
    reason: str = ""


@dataclass(frozen=True)
class Config:
    path: str
    stores: Mapping[str, str]
    rules: tuple[Rule, ...]
    ignore: tuple[GcsPattern, ...]
    batching: Batching
    state_bucket: str
    results_topic: str
    names: NamePolicy
    followup_topic: str
    followup_deadline_hours: float
    exports: Exports = Exports()
    reconcile: Reconcile = Reconcile()
    _matcher: PatternSet = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    _ignore_matcher: PatternSet = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_matcher", PatternSet([rule.pattern for rule in self.rules]))
        object.__setattr__(self, "_ignore_matcher", PatternSet(list(self.ignore)))

    @property
    def buckets(self) -> frozenset[str]:
        """Buckets that some rule watches; events from others are ignored."""
        return self._matcher.buckets

    def rule_named(self, name: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.name == name), None)

    def route(self, bucket: str, name: str) -> Route:
        """The rule for ``gs://bucket/name``: global ignores first, then the first matching rule."""
        if bucket not in self.buckets:
            return Route(None, reason=f"bucket {bucket!r} is not watched by any rule")
        if name.endswith("/"):
            return Route(None, reason="folder placeholder object (name ends with '/')")
        hidden = self._ignore_matcher.first_match(bucket, name)
        if hidden is not None:
            pattern = self.ignore[hidden]
            return Route(None, ignored_by=pattern, reason=f"ignored by {pattern.uri}")
        index = self._matcher.first_match(bucket, name)
        if index is None:
            return Route(None, reason="no rule matches")
        rule = self.rules[index]
        for pattern in rule.ignore:
            if pattern.matches(bucket, name):
                return Route(None, ignored_by=pattern, reason=f"ignored by rule {rule.name!r}: {pattern.uri}")
        return Route(rule)


class _LineLoader(yaml.SafeLoader):
    """A YAML loader whose mappings and lists remember the line of each value."""


class _Map(dict):
    lines: dict[str, int]


class _List(list):
    lines: list[int]


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
    """A mapping whose keys are plain values, each written once (YAML's last-wins would hide a setting)."""
    result = _Map()
    result.lines = {}
    key_lines: dict[Any, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value, not a list or mapping", key_node.start_mark)
        key = loader.construct_object(key_node, deep=True)
        if key in key_lines:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {key_lines[key]})", key_node.start_mark)
        key_lines[key] = key_node.start_mark.line + 1
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = value_node.start_mark.line + 1
    return result


def _construct_list(loader: _LineLoader, node: yaml.SequenceNode) -> _List:
    result = _List(loader.construct_object(child, deep=True) for child in node.value)
    result.lines = [child.start_mark.line + 1 for child in node.value]
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_list)


class _Reader:
    """Validation helpers that collect ``PATH:LINE: message`` problems."""

    def __init__(self, path: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env
        self.problems: list[str] = []

    def problem(self, line: int, message: str) -> None:
        self.problems.append(f"{self.path}:{line}: {message}")

    def text(self, container: Any, key: Any, line: int, what: str) -> str | None:
        value = container[key]
        if not isinstance(value, str) or not value.strip():
            self.problem(line, f"{what} must be a non-empty string, got {value!r}")
            return None
        return self.interpolate(value, line, what)

    def interpolate(self, value: str, line: int, what: str) -> str | None:
        missing: list[str] = []

        def substitute(found: re.Match[str]) -> str:
            name, default = found.group(1), found.group(2)
            if name in self.env and self.env[name] != "":
                return self.env[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        result = _ENV_RE.sub(substitute, value)
        if missing:
            names = ", ".join(f"${{{name}}}" for name in missing)
            self.problem(
                line,
                f"{what} uses {names} but the environment does not set it: export it "
                f"(deploy.sh and .local/stack.env set the defaults) or write ${{{missing[0]}:-default}}",
            )
            return None
        return result

    def pattern(self, value: Any, line: int, what: str) -> GcsPattern | None:
        if not isinstance(value, str):
            self.problem(line, f"{what} must be a gs:// pattern string, got {value!r}")
            return None
        uri = self.interpolate(value, line, what)
        if uri is None:
            return None
        try:
            return parse_gcs_uri(uri)
        except WildcardError as exc:
            self.problem(line, f"{what}: {exc}")
            return None

    def number(self, container: _Map, key: str, default: float, low: float, high: float, integer: bool) -> float:
        if key not in container:
            return default
        value, line = container[key], container.lines[key]
        if isinstance(value, str):
            value = self.interpolate(value, line, key)
            try:
                value = int(value) if integer else float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                self.problem(line, f"{key} must be a number, got {container[key]!r}")
                return default
        kind = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            self.problem(line, f"{key} must be {'an integer' if integer else 'a number'}, got {value!r}")
            return default
        if not low <= value <= high:
            self.problem(line, f"{key} must be between {_plain(low)} and {_plain(high)}, got {value!r}")
            return default
        return value

    def section(self, document: _Map, key: str, known: tuple[str, ...]) -> _Map:
        value = document.get(key)
        if value is None:
            empty = _Map()
            empty.lines = {}
            return empty
        if not isinstance(value, _Map):
            self.problem(document.lines[key], f"{key} must be a mapping of settings")
            empty = _Map()
            empty.lines = {}
            return empty
        self.unknown_keys(value, known, key)
        return value

    def unknown_keys(self, mapping: _Map, known: tuple[str, ...], where: str) -> None:
        for key in mapping:
            if key not in known:
                guess = get_close_matches(str(key), known, n=1)
                hint = f"did you mean {guess[0]!r}?" if guess else f"known keys: {', '.join(known)}"
                self.problem(mapping.lines[key], f"unknown key {key!r} in {where}: {hint}")

    def required(self, mapping: _Map, key: str, where: str, line: int) -> bool:
        if key not in mapping or mapping[key] in (None, ""):
            self.problem(line, f"{where} needs '{key}'")
            return False
        return True


def _plain(number: float) -> str:
    """``1000000`` rather than ``1e+06``; ``0.01`` as is."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raise :class:`ConfigError` listing every problem."""
    return parse(read_source(path, "config file"), str(path), os.environ if env is None else env)


def read_source(path: str | os.PathLike[str], what: str) -> str:
    """The text of a config file; :class:`ConfigError` when ``what`` (its kind, for the message) cannot be read.

    Not UTF-8 names the line and the first byte that is not, rather than a traceback.
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}:0: cannot read the {what} ({exc.strerror}): check the path"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([not_utf8(path, exc, what)]) from None


def not_utf8(path: str | os.PathLike[str], exc: UnicodeDecodeError, what: str) -> str:
    """``PATH:LINE: not UTF-8 text (byte N is 0xHH): save the WHAT as UTF-8``."""
    line = exc.object[:exc.start].count(b"\n") + 1
    return f"{path}:{line}: not UTF-8 text (byte {exc.start + 1} is 0x{exc.object[exc.start]:02x}): save the {what} as UTF-8"


def parse(source: str, path: str, env: Mapping[str, str]) -> Config:
    """Validate config text; ``path`` only labels the messages."""
    reader = _Reader(path, env)
    try:
        document = yaml.load(source, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}:{line}: not valid YAML ({reason}): fix the indentation or quoting"]) from None
    if not isinstance(document, _Map):
        raise ConfigError([f"{path}:1: the file must be a mapping with 'stores' and 'rules' at the top level"])
    reader.unknown_keys(document, _TOP_LEVEL, "the top level")

    stores = _stores(reader, document)
    rules = _rules(reader, document, stores)
    ignore = _patterns(reader, document, "ignore")
    batching = _batching(reader, document)
    state = reader.section(document, "state", ("bucket",))
    state_bucket = _state_bucket(reader, document, state, rules)
    _quarantine_loops(reader, rules, state_bucket)
    results = reader.section(document, "results", ("topic", "object_names", "hash_key"))
    results_topic = _topic(reader, document, results, "results")
    names = _names(reader, results)
    followup = reader.section(document, "followup", ("topic", "deadline_hours"))
    followup_topic = _topic(reader, document, followup, "followup")
    # A follow-up message is dead-lettered after 100 deliveries (Pub/Sub's maximum), about 16 h
    # with deploy.sh's backoff: the deadline must come first, or the UNKNOWN result is never sent.
    deadline = reader.number(followup, "deadline_hours", 12.0, 0.01, 15, False)
    exports = _exports(reader, document, rules, state_bucket)
    reconcile_section = reader.section(document, "reconcile", ("overlap_minutes", "settle_seconds",
                                                               "first_window_hours"))
    reconcile = Reconcile(
        overlap_minutes=float(reader.number(reconcile_section, "overlap_minutes", Reconcile.overlap_minutes, 0,
                                            24 * 60, False)),
        settle_seconds=float(reader.number(reconcile_section, "settle_seconds", Reconcile.settle_seconds, 0, 3600,
                                           False)),
        # Claims are deleted after 30 days (deploy.sh): an older object's claim may be gone.
        first_window_hours=float(reader.number(reconcile_section, "first_window_hours", Reconcile.first_window_hours,
                                               0.01, MAX_RECONCILE_WINDOW_HOURS, False)),
    )

    if reader.problems:
        raise ConfigError(reader.problems)
    return Config(
        path=path,
        stores=stores,
        rules=tuple(rules),
        ignore=tuple(ignore),
        batching=batching,
        state_bucket=state_bucket,
        results_topic=results_topic,
        names=names,
        followup_topic=followup_topic,
        followup_deadline_hours=float(deadline),
        exports=exports,
        reconcile=reconcile,
    )


def _batching(reader: _Reader, document: _Map) -> Batching:
    section = reader.section(document, "batching", ("max_objects", "max_wait_seconds", "seal_after_quiet_seconds"))
    max_objects = int(reader.number(section, "max_objects", Batching.max_objects, 1, 100_000, True))
    max_wait = float(reader.number(section, "max_wait_seconds", Batching.max_wait_seconds, 0, 300, False))
    key = "seal_after_quiet_seconds"
    quiet = float(reader.number(section, key, Batching.seal_after_quiet_seconds, 0, 300, False))
    if key in section and 0 < quiet < MIN_QUIET_SECONDS:
        reader.problem(section.lines[key], f"{key} must be 0 (off) or at least {MIN_QUIET_SECONDS:g}: the driver "
                                           f"lists the batch every {MIN_QUIET_SECONDS / 4:g} s at most, got {quiet:g}")
        quiet = Batching.seal_after_quiet_seconds
    elif key in section and quiet and max_wait and quiet >= max_wait:
        reader.problem(section.lines[key], f"{key} ({quiet:g}) must be shorter than max_wait_seconds ({max_wait:g}), "
                                           "or the window always closes first: lower it, or write 0 to turn it off")
    return Batching(max_objects=max_objects, max_wait_seconds=max_wait, seal_after_quiet_seconds=quiet)


def _stores(reader: _Reader, document: _Map) -> dict[str, str]:
    section = document.get("stores")
    if not isinstance(section, _Map) or not section:
        line = document.lines.get("stores", 1)
        reader.problem(line, "'stores' must map at least one alias to a DICOM store name, e.g. main: projects/P/locations/L/datasets/D/dicomStores/S")
        return {}
    stores: dict[str, str] = {}
    for alias in section:
        line = section.lines[alias]
        name = reader.text(section, alias, line, f"store {alias!r}")
        if name is None:
            continue
        if not STORE_RE.fullmatch(name):
            reader.problem(line, f"store {alias!r} is {name!r}: write the full name projects/PROJECT/locations/LOCATION/datasets/DATASET/dicomStores/STORE")
            continue
        stores[str(alias)] = name
    return stores


def _rules(reader: _Reader, document: _Map, stores: dict[str, str]) -> list[Rule]:
    section = document.get("rules")
    if not isinstance(section, _List) or not section:
        reader.problem(document.lines.get("rules", 1), "'rules' must be a list with at least one rule (name, match, store)")
        return []
    rules: list[Rule] = []
    seen: set[str] = set()
    for entry, line in zip(section, section.lines):
        if not isinstance(entry, _Map):
            reader.problem(line, "each rule must be a mapping with name, match and store")
            continue
        reader.unknown_keys(entry, ("name", "match", "store", "ignore", "blob_storage_class", "on_failure",
                                    "on_conflict"), "a rule")
        if not all([reader.required(entry, key, "this rule", line) for key in ("name", "match", "store")]):
            continue
        name = entry["name"]
        name_line = entry.lines["name"]
        if not isinstance(name, str) or not RULE_NAME_RE.fullmatch(name):
            reader.problem(name_line, f"rule name {name!r} must be 1-63 lowercase letters, digits, '-' or '_' (it names state objects)")
            continue
        if name in seen:
            reader.problem(name_line, f"rule name {name!r} is used twice: give each rule its own name")
            continue
        seen.add(name)
        pattern = reader.pattern(entry["match"], entry.lines["match"], f"rule {name!r} match")
        if pattern is not None and pattern.pattern.endswith("/"):
            reader.problem(entry.lines["match"], f"rule {name!r} match {pattern.uri} matches only folder placeholders, "
                                                 f"which are never imported: did you mean {pattern.uri}**?")
        alias = entry["store"]
        store = stores.get(alias) if isinstance(alias, str) else None
        if store is None and stores:
            known = ", ".join(sorted(stores)) or "none"
            reader.problem(entry.lines["store"], f"rule {name!r} names store {alias!r}, which 'stores' does not define (known: {known})")
        ignore = _patterns(reader, entry, "ignore", f"rule {name!r} ignore")
        storage_class = entry.get("blob_storage_class")
        if storage_class is not None and storage_class not in BLOB_STORAGE_CLASSES:
            reader.problem(entry.lines["blob_storage_class"], f"blob_storage_class must be one of {', '.join(BLOB_STORAGE_CLASSES)}, got {storage_class!r}")
        on_failure = _on_failure(reader, entry, name)
        on_conflict = entry.get("on_conflict", KEEP)
        if on_conflict not in ON_CONFLICT:
            reader.problem(entry.lines["on_conflict"], f"rule {name!r} on_conflict must be keep (report a re-sent "
                           f"instance whose bytes differ) or replace (delete the stored one and import the file "
                           f"again), got {on_conflict!r}")
            on_conflict = KEEP
        if pattern is not None and store is not None:
            rules.append(Rule(name, pattern, store, alias, tuple(ignore), storage_class, line, on_failure, on_conflict))
    return rules


def _on_failure(reader: _Reader, entry: _Map, name: str) -> FailurePolicy:
    """``report`` (default), ``tag``, or ``{quarantine: gs://BUCKET/PREFIX/, move: true|false}``."""
    value = entry.get("on_failure", REPORT)
    line = entry.lines.get("on_failure", 0)
    usage = "report, tag, or a mapping {quarantine: gs://BUCKET/PREFIX/, move: false}"
    if value in (REPORT, TAG):
        return FailurePolicy(value)
    if not isinstance(value, _Map):
        reader.problem(line, f"rule {name!r} on_failure must be {usage}, got {value!r}")
        return FailurePolicy()
    reader.unknown_keys(value, (QUARANTINE, "move"), f"rule {name!r} on_failure")
    if QUARANTINE not in value:
        reader.problem(line, f"rule {name!r} on_failure needs 'quarantine: gs://BUCKET/PREFIX/' (the place failed "
                             "files are copied to)")
        return FailurePolicy()
    where = value.lines[QUARANTINE]
    uri = reader.text(value, QUARANTINE, where, f"rule {name!r} quarantine")
    move = value.get("move", False)
    if not isinstance(move, bool):
        reader.problem(value.lines["move"], f"rule {name!r} on_failure move must be true (copy, then delete the "
                                            f"failed generation) or false (copy only), got {move!r}")
        move = False
    if uri is None:
        return FailurePolicy()
    try:
        bucket, prefix = split_gcs_uri(uri if uri.count("/") >= 3 else uri.rstrip("/") + "/")
    except WildcardError as exc:
        reader.problem(where, f"rule {name!r} quarantine: {exc}")
        return FailurePolicy()
    if any(char in WILDCARD_CHARS for char in prefix):
        reader.problem(where, f"rule {name!r} quarantine {uri!r} has a wildcard: give a plain gs://BUCKET/PREFIX/")
        return FailurePolicy()
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return FailurePolicy(QUARANTINE, bucket, prefix, move, where)


def _quarantine_loops(reader: _Reader, rules: list[Rule], state_bucket: str) -> None:
    """A quarantine bucket a rule watches would import the copies as new files (a loop); the state bucket is ours."""
    watched = {rule.pattern.bucket: rule.name for rule in rules}
    for rule in rules:
        policy = rule.on_failure
        if policy.action != QUARANTINE:
            continue
        if policy.bucket in watched:
            reader.problem(policy.line, f"rule {rule.name!r} quarantines into gs://{policy.bucket}, which rule "
                                        f"{watched[policy.bucket]!r} watches: the copies would be imported again (a "
                                        "loop); quarantine into a bucket no rule watches")
        elif policy.bucket == state_bucket:
            reader.problem(policy.line, f"rule {rule.name!r} quarantines into the state bucket gs://{state_bucket}: "
                                        "use a bucket of its own (the state bucket is the function's, and its "
                                        "lifecycle rule deletes objects)")


def _patterns(reader: _Reader, container: _Map, key: str, what: str | None = None) -> list[GcsPattern]:
    value = container.get(key)
    if value is None:
        return []
    if not isinstance(value, _List):
        reader.problem(container.lines[key], f"{what or key} must be a list of gs:// patterns")
        return []
    found = [reader.pattern(item, line, what or key) for item, line in zip(value, value.lines)]
    return [pattern for pattern in found if pattern is not None]


def _state_bucket(reader: _Reader, document: _Map, state: _Map, rules: list[Rule]) -> str:
    if not reader.required(state, "bucket", "'state'", document.lines.get("state", 1)):
        return ""
    line = state.lines["bucket"]
    bucket = reader.text(state, "bucket", line, "state bucket")
    if bucket is None:
        return ""
    try:
        validate_bucket(bucket)
    except WildcardError as exc:
        reader.problem(line, str(exc))
        return ""
    for rule in rules:
        if rule.pattern.bucket == bucket:
            reader.problem(line, f"state bucket {bucket!r} is also watched by rule {rule.name!r}: use a separate bucket for state, or staging copies would be imported as new files")
    return bucket


def _topic(reader: _Reader, document: _Map, section: _Map, name: str) -> str:
    if not reader.required(section, "topic", f"'{name}'", document.lines.get(name, 1)):
        return ""
    line = section.lines["topic"]
    topic = reader.text(section, "topic", line, f"{name} topic")
    if topic is None:
        return ""
    if not TOPIC_RE.fullmatch(topic):
        reader.problem(line, f"{name} topic {topic!r} must be a full topic name: projects/PROJECT/topics/TOPIC")
        return ""
    return topic


def _exports(reader: _Reader, document: _Map, rules: list[Rule], state_bucket: str) -> Exports:
    """``exports.destinations``, or by default ``gs://$EXPORT_BUCKET/`` (nothing when that is unset)."""
    section = reader.section(document, "exports", ("destinations", "max_query_results"))
    cap = int(reader.number(section, "max_query_results", Exports.max_query_results, 1, MAX_QUERY_RESULTS, True))
    if "destinations" not in section:
        bucket = reader.env.get(EXPORT_BUCKET_ENV, "")
        if not bucket:
            return Exports((), default=True, max_query_results=cap)
        line = document.lines.get("exports", 1)
        folder = _destination(reader, f"gs://{bucket}/", line, rules, state_bucket,
                              f"the default export destination (${{{EXPORT_BUCKET_ENV}}})")
        return Exports((folder,) if folder else (), default=True, max_query_results=cap)
    value, line = section["destinations"], section.lines["destinations"]
    if value is None:
        value = _List()
        value.lines = []
    if not isinstance(value, _List):
        reader.problem(line, "exports.destinations must be a list of gs://BUCKET/PREFIX/ folders, e.g. "
                             "- gs://${EXPORT_BUCKET}/ (an empty list refuses every export)")
        return Exports(max_query_results=cap)
    folders: list[str] = []
    for item, item_line in zip(value, value.lines):
        if not isinstance(item, str):
            reader.problem(item_line, f"export destination must be a gs://BUCKET/PREFIX/ string, got {item!r}")
            continue
        text = reader.interpolate(item, item_line, "export destination")
        folder = _destination(reader, text, item_line, rules, state_bucket, "export destination") if text else None
        if folder in folders:
            reader.problem(item_line, f"export destination {folder} is listed twice: remove one")
        elif folder:
            folders.append(folder)
    return Exports(tuple(folders), max_query_results=cap)


def _destination(reader: _Reader, uri: str, line: int, rules: list[Rule], state_bucket: str, what: str) -> str | None:
    """A valid allowed folder ``gs://BUCKET/PREFIX/``, or None with the problem recorded."""
    try:
        bucket, prefix = split_gcs_uri(uri if "/" in uri.removeprefix("gs://") else uri + "/")
    except WildcardError as exc:
        reader.problem(line, f"{what}: {exc}")
        return None
    if any(char in WILDCARD_CHARS for char in prefix):
        reader.problem(line, f"{what} {uri!r} has a wildcard: list folders such as gs://{bucket}/research/")
        return None
    if prefix and not prefix.endswith("/"):
        reader.problem(line, f"{what} {uri!r} must end with '/': gs://{bucket}/{prefix}/ (without it, "
                             f"gs://{bucket}/{prefix}-other/ would be allowed too)")
        return None
    if any(segment in ("", ".", "..") for segment in prefix.split("/")[:-1]):
        reader.problem(line, f"{what} {uri!r} has an empty, '.' or '..' folder: write the folder plainly")
        return None
    if bucket == state_bucket:
        reader.problem(line, f"{what} {uri!r} is in the state bucket: its lifecycle deletes objects; "
                             "use a bucket of its own for exports")
        return None
    for rule in rules:
        if rule.pattern.bucket == bucket:
            reader.problem(line, f"{what} {uri!r} is in bucket {bucket!r}, watched by rule {rule.name!r}: "
                                 "exports would be imported again; use a bucket no rule watches")
            return None
    return f"gs://{bucket}/{prefix}"


def _names(reader: _Reader, results: _Map) -> NamePolicy:
    mode = results.get("object_names", "plain")
    if mode not in MODES:
        reader.problem(results.lines["object_names"], f"object_names must be one of {', '.join(MODES)}, got {mode!r}")
        return NamePolicy()
    key = ""
    if "hash_key" in results:
        key = reader.text(results, "hash_key", results.lines["hash_key"], "hash_key") or ""
    return NamePolicy(mode, key)


def default_path() -> str:
    """``$DICOM_IMPORT_CONFIG``, else ``config.yaml`` beside ``main.py``."""
    return os.environ.get("DICOM_IMPORT_CONFIG") or str(SOURCE_DIR / "config.yaml")


def shown_path(path: str) -> str:
    """The config's path as its operators name it: relative to the source folder (beside ``main.py``) when inside."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(SOURCE_DIR)) if resolved.is_relative_to(SOURCE_DIR) else path
