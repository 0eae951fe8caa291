"""What every export module shares: the refusal error and DICOMweb resource paths of checked UIDs."""

from __future__ import annotations

import re

_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


class ExportRequestError(ValueError):
    """A request refused before any call: the message names the field and the fix; ``rule`` the config rule, if any."""

    def __init__(self, message: str, rule: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule


def check_uid(uid: str, what: str) -> str:
    """A DICOM UID: digits and dots, at most 64 characters (leading zeros tolerated, as found in real data)."""
    if not isinstance(uid, str) or len(uid) > 64 or not _UID_RE.fullmatch(uid):
        raise ExportRequestError(f"{what} {uid!r} is not a DICOM UID: digits separated by dots, at most 64 characters")
    return uid


def resource_path(study: str, series: str | None = None, instance: str | None = None) -> str:
    """``/studies/S[/series/R[/instances/I]]``, each UID checked."""
    path = f"/studies/{check_uid(study, 'study UID')}"
    if series is not None:
        path += f"/series/{check_uid(series, 'series UID')}"
    if instance is not None:
        path += f"/instances/{check_uid(instance, 'instance UID')}"
    return path
