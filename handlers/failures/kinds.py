"""What kind of failure a per-file error is, from the API's code and message.

``empty``: "empty DICOM instance found"; ``conflict``: a re-sent instance whose
bytes differ from the stored one ("... the DICOM files differ (checksum
mismatch)."); ``not-dicom``: the file is no (valid, complete) DICOM file;
``other``: anything else (a missing UID, an unreadable object...). The message
decides first (the codes of these errors are not documented); ALREADY_EXISTS
alone also means a conflict.

``unknown`` is no per-file error: it is what the ``failures`` and ``retry`` tools
call each member of a batch whose outcome is unknown (``UNKNOWN``: its operation
could not be followed to the end), none of which is known to be stored.
"""

from __future__ import annotations

import re

NOT_DICOM, EMPTY, CONFLICT, OTHER = "not-dicom", "empty", "conflict", "other"
KINDS = (NOT_DICOM, EMPTY, CONFLICT, OTHER)
UNKNOWN_OUTCOME = "unknown"
ALREADY_EXISTS = 6

_EMPTY = re.compile(r"empty (dicom )?(instance|file|object)", re.IGNORECASE)
_CONFLICT = re.compile(r"checksum mismatch|files differ|already exists.*differ", re.IGNORECASE)
_NOT_DICOM = re.compile(
    r"not (a |an )?(valid )?dicom|invalid dicom|dicm|preamble|truncated|failed to parse|cannot parse|"
    r"unable to parse|malformed", re.IGNORECASE)


def classify(code: int | None, message: str) -> str:
    """The kind of a per-file error."""
    if _EMPTY.search(message):
        return EMPTY
    if _CONFLICT.search(message) or code == ALREADY_EXISTS:
        return CONFLICT
    if _NOT_DICOM.search(message):
        return NOT_DICOM
    return OTHER
