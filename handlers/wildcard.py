"""Cloud Storage wildcard URIs with the Cloud Healthcare API's import semantics.

One implementation serves the function (rules), the emulator (``gcsSource.uri``)
and the tools. The grammar, from the ``dicomStores.import`` reference:

* ``*`` matches zero or more characters other than ``/``;
* ``**`` matches zero or more characters, ``/`` included. It must be the only
  wildcard of the path and sit at its end, optionally followed by a literal
  file extension (``gs://B/DIR/**.dcm``);
* ``?`` matches exactly one character. The reference does not say whether it
  can match ``/``; we treat it as one non-``/`` character (documented choice);
* every other character is literal, and wildcards are allowed only in the
  object part, never in the bucket name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
WILDCARD_CHARS = frozenset("*?")


class WildcardError(ValueError):
    """A ``gs://`` URI or pattern that the Healthcare API would refuse."""


@dataclass(frozen=True)
class GcsPattern:
    """A validated ``gs://BUCKET/OBJECT_PATTERN`` with its compiled matcher."""

    bucket: str
    pattern: str
    regex: re.Pattern[str] = field(repr=False, compare=False)

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.pattern}"

    @property
    def literal_prefix(self) -> str:
        """The object-name prefix every match starts with (for listing)."""
        return literal_prefix(self.pattern)

    def matches(self, bucket: str, name: str) -> bool:
        return bucket == self.bucket and self.regex.fullmatch(name) is not None


def literal_prefix(pattern: str) -> str:
    """The part of an object pattern before its first wildcard."""
    for index, char in enumerate(pattern):
        if char in WILDCARD_CHARS:
            return pattern[:index]
    return pattern


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """Split ``gs://BUCKET/OBJECT`` into its bucket and object parts."""
    if not isinstance(uri, str) or not uri.startswith("gs://"):
        raise WildcardError(f"{uri!r} is not a Cloud Storage URI: write it as gs://BUCKET/OBJECT_PATTERN")
    bucket, slash, obj = uri[len("gs://"):].partition("/")
    if not slash:
        raise WildcardError(f"{uri!r} names no object: add an object pattern after the bucket, e.g. gs://{bucket}/**.dcm")
    validate_bucket(bucket, uri)
    return bucket, obj


def validate_bucket(bucket: str, uri: str = "") -> None:
    where = f" in {uri!r}" if uri else ""
    if any(c in WILDCARD_CHARS for c in bucket):
        raise WildcardError(f"bucket {bucket!r}{where} has a wildcard: wildcards are allowed only in the object part")
    if (not _BUCKET_RE.fullmatch(bucket) or ".." in bucket
            or any(len(part) > 63 for part in bucket.split("."))):  # dotted: up to 222, each part at most 63
        raise WildcardError(
            f"bucket {bucket!r}{where} is not a valid bucket name: use 3-63 lowercase letters, digits, '-', '_' or '.' "
            "(up to 222 with dots, each dotted part at most 63), starting and ending with a letter or digit"
        )


def compile_object_pattern(pattern: str) -> str:
    """Validate an object pattern and return the equivalent regular expression source."""
    if pattern == "":
        raise WildcardError("the object pattern is empty: name an object or use a wildcard such as **.dcm")
    if "\n" in pattern or "\r" in pattern:
        raise WildcardError("the object pattern contains a line break, which Cloud Storage object names cannot hold")
    if "***" in pattern:
        raise WildcardError(f"{pattern!r} has '***': use '*' (within a folder) or '**' (across folders)")
    if "**" in pattern:
        head, _, tail = pattern.partition("**")
        if any(c in WILDCARD_CHARS for c in head + tail):
            raise WildcardError(f"{pattern!r} mixes '**' with other wildcards: '**' must be the only wildcard in the path")
        if "/" in tail:
            raise WildcardError(
                f"{pattern!r} has '**' before the last '/': '**' must be at the end of the path, "
                "optionally followed by a file extension such as '**.dcm'"
            )
        return re.escape(head) + ".*" + re.escape(tail)
    parts = []
    for char in pattern:
        if char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(char))
    return "".join(parts)


def parse_gcs_uri(uri: str) -> GcsPattern:
    """Parse and validate a ``gs://`` import URI; raise :class:`WildcardError` with the fix."""
    bucket, obj = split_gcs_uri(uri)
    try:
        source = compile_object_pattern(obj)
    except WildcardError as exc:
        raise WildcardError(f"invalid Cloud Storage URI {uri!r}: {exc}") from None
    return GcsPattern(bucket, obj, re.compile(source, re.DOTALL))


class PatternSet:
    """Ordered patterns matched at once: the index of the first that matches, or None.

    Each pattern is filed under the folder part of its literal prefix
    (``site1/CT/`` for ``site1/CT/*/IMG?.dcm``). A name can only match patterns
    filed under one of its own folder prefixes (``""``, ``site1/``,
    ``site1/CT/``...), so a lookup tries a handful of candidates instead of
    every rule; candidates are tried in rule order and the lowest index wins.
    """

    def __init__(self, patterns: Sequence[GcsPattern]) -> None:
        self.patterns = list(patterns)
        self._index: dict[str, dict[str, list[int]]] = {}
        for position, pattern in enumerate(self.patterns):
            head = pattern.literal_prefix
            folder = head[: head.rfind("/") + 1]
            self._index.setdefault(pattern.bucket, {}).setdefault(folder, []).append(position)
        self._fullmatch = [pattern.regex.fullmatch for pattern in self.patterns]

    def first_match(self, bucket: str, name: str) -> int | None:
        folders = self._index.get(bucket)
        if folders is None:
            return None
        best: int | None = None
        end = 0
        while True:
            for position in folders.get(name[:end], ()):
                if best is not None and position > best:
                    break
                if self._fullmatch[position](name):
                    best = position
                    break
            slash = name.find("/", end)
            if slash < 0:
                return best
            end = slash + 1

    @property
    def buckets(self) -> frozenset[str]:
        return frozenset(self._index)


def exact_uri(bucket: str, name: str) -> tuple[str, bool]:
    """An import URI that covers object ``name``; True when it covers nothing else.

    The API has no escape for ``*`` and ``?``: such characters are replaced by
    ``?`` (one character), which may also cover look-alike names.
    """
    covered = "".join("?" if c in WILDCARD_CHARS else c for c in name)
    return f"gs://{bucket}/{covered}", covered == name


def narrow_to_prefix(pattern: GcsPattern, prefix: str) -> GcsPattern | None:
    """The pattern matching exactly the objects of ``pattern`` whose names start with ``prefix``.

    Returns None when no such single pattern exists (or it would not be exact);
    callers then list and filter. ``prefix`` is a folder (ending in ``/``) or empty.
    """
    if prefix and not prefix.endswith("/"):
        return None
    obj = pattern.pattern
    head = literal_prefix(obj)
    if head.startswith(prefix):
        return pattern
    if "**" in obj:
        if prefix.startswith(head):
            return parse_gcs_uri(f"gs://{pattern.bucket}/{prefix}{obj[len(head):]}")
        return None
    segments = obj.split("/")
    folders = prefix.rstrip("/").split("/")
    if len(folders) >= len(segments):
        return None
    for glob, folder in zip(segments, folders):
        if glob != folder and (not glob or re.fullmatch(compile_object_pattern(glob), folder, re.DOTALL) is None):
            return None
    rest = "/".join(segments[len(folders):])
    return parse_gcs_uri(f"gs://{pattern.bucket}/{prefix}{rest}")

