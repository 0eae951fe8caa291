"""Object names for received instances: the configured template, filled with values made safe.

Every value is reduced to ``A-Z a-z 0-9 . _ -`` (anything else becomes ``_``),
never ``.`` or ``..`` alone and never empty, and cut to 64 characters, so a
sender cannot add folders, climb out of the prefix, or write wildcard or control
characters into a name. The three UIDs that identify an instance are required,
and must be UIDs (numbers joined by dots, which pass unchanged): two instances
whose UIDs differ only in characters made ``_`` would otherwise share a name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping

__all__ = ["MissingUid", "ObjectNamer", "hide_uids", "is_uid", "safe_value"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_MAX_UID = 64
_UID_SHAPED = re.compile(r"[0-9]+(?:\.[0-9]+){2,}")
_MAX_VALUE = 64
_MAX_NAME_BYTES = 1024  # Cloud Storage's limit
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class MissingUid(ValueError):
    """The dataset lacks a UID the object name (and the DICOM store) needs."""


def safe_value(value: object) -> str:
    """``value`` as one safe object name segment (never empty, never ``.``/``..``)."""
    text = _UNSAFE.sub("_", str(value).strip())[:_MAX_VALUE]
    if not text.strip("."):
        text = text.replace(".", "_") or "_"
    return text


def is_uid(value: str) -> bool:
    """Whether ``value`` is a UID as PS3.5 9.1 allows: numbers joined by dots, at most 64 characters.

    (Leading zeros, which the standard forbids but some modalities write, are let through.)
    """
    return len(value) <= _MAX_UID and _UID.fullmatch(value) is not None


def hide_uids(text: str) -> str:
    """``text`` with each UID-shaped run (three or more numbers joined by dots) replaced by ``<UID>``."""
    return _UID_SHAPED.sub("<UID>", text)


@dataclass(frozen=True)
class ObjectNamer:
    """Fills ``template`` (fields of :data:`gateway.config.NAME_FIELDS`) and prepends ``prefix``."""

    template: str
    prefix: str = ""

    def name(self, values: Mapping[str, object], received: datetime | None = None) -> str:
        """The object name (without ``gs://bucket/``) for an instance's ``values``.

        Raises :class:`MissingUid` if a UID of :data:`REQUIRED_UIDS` is missing or empty, ValueError if
        one is not a UID.
        """
        missing = [key for key in REQUIRED_UIDS if not str(values.get(key) or "").strip()]
        if missing:
            raise MissingUid(f"missing {', '.join(missing)}")
        invalid = [key for key in REQUIRED_UIDS if not is_uid(str(values[key]).strip())]
        if invalid:
            raise ValueError(f"{', '.join(invalid)} not a valid UID: digits and dots, at most 64 characters (PS3.5 9.1)")
        when = received or datetime.now(timezone.utc)
        fields = {key: safe_value(value) if str(value or "").strip() else "unknown" for key, value in values.items()}
        fields.setdefault("ReceivedDate", when.strftime("%Y-%m-%d"))
        for key in ("CallingAETitle", "CalledAETitle", "SOPClassUID", "Modality", "StudyDate"):
            fields.setdefault(key, "unknown")
        name = self.prefix + self.template.format(**fields)
        if len(name.encode()) > _MAX_NAME_BYTES:
            raise ValueError(f"object name is {len(name.encode())} bytes, Cloud Storage allows {_MAX_NAME_BYTES}: shorten object_name")
        return name
