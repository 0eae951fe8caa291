"""What of an object's name may appear in logs and result messages.

Object names often carry patient data (names, accession numbers). With
``results.object_names: hashed`` every name that leaves the function as a log
field or message field becomes ``sha256:<hex>`` of ``gs://bucket/name``
(optionally keyed with ``results.hash_key`` so short names cannot be guessed).

Error texts never carry a name, whatever the mode: a Google API error's text
starts with the request URL, which holds the object name URL-encoded, and a
server message may quote the name too (``No such object: BUCKET/NAME``).
:func:`error_text` keeps what explains the error and takes out the names it is
given; :func:`described` keeps only what can name no object (class, HTTP code,
error reason), for an error whose names are not known. An error raised as
:class:`NameFree` (the Cloud Storage calls on source objects) names none already.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from google.api_core.exceptions import GoogleAPICallError

PLAIN = "plain"
HASHED = "hashed"
MODES = (PLAIN, HASHED)


@dataclass(frozen=True)
class NamePolicy:
    mode: str = PLAIN
    hash_key: str = ""

    @property
    def hashed(self) -> bool:
        return self.mode == HASHED

    def uri(self, bucket: str, name: str) -> str:
        """The object's ``gs://`` URI as the config allows it to be shown."""
        uri = f"gs://{bucket}/{name}"
        if not self.hashed:
            return uri
        if self.hash_key:
            digest = hmac.new(self.hash_key.encode(), uri.encode(), hashlib.sha256).hexdigest()
        else:
            digest = hashlib.sha256(uri.encode()).hexdigest()
        return f"sha256:{digest}"


NAME_REMOVED = "[object name]"
# Google error reasons are camelCase or UPPER_SNAKE words ("forbidden", "RATE_LIMIT_EXCEEDED"): never a name.
_ERROR_REASON = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,79}")


class NameFree(Exception):
    """An error whose text names no object, by construction: shown as it is, whatever the name policy."""


def error_text(exc: BaseException, names: Iterable[str]) -> str:
    """What a failed call may say in results and logs: no request URL, none of ``names``.

    A :class:`NameFree` error: its text; a Google API error: its class, HTTP
    code and the server's message (its ``str`` starts with the request URL);
    anything else: its class and text. Each of ``names``, plain or URL-encoded,
    becomes :data:`NAME_REMOVED`.
    """
    from google.api_core.exceptions import GoogleAPICallError

    if isinstance(exc, NameFree):
        return str(exc)
    if isinstance(exc, GoogleAPICallError):
        text = f"{exc.__class__.__name__} {exc.code}: {_server_message(exc)}"
    else:
        text = f"{exc.__class__.__name__}: {exc}"
    return without_names(text, names)


def _server_message(exc: GoogleAPICallError) -> str:
    """``error.errors[0].message``; else the text after ``METHOD URL: `` (a body without ``errors``)."""
    for error in exc.errors:
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    request, separator, message = exc.message.partition(": ")
    if separator and "://" in request:
        return message
    return exc.reason or "the server gave no reason"


def described(exc: BaseException) -> str:
    """``exc`` told without any of its free text, so without any name whoever raised it.

    A :class:`NameFree` error: its text; a Google API error: class, HTTP code
    and error reason (``Forbidden 403 forbidden``); a RetryError: what its last
    attempt raised, so described; anything else (a requests error, whose text
    holds the request URL): its class.
    """
    from google.api_core.exceptions import GoogleAPICallError, RetryError

    if isinstance(exc, NameFree):
        return str(exc)
    if isinstance(exc, GoogleAPICallError):
        return f"{exc.__class__.__name__} {exc.code} {error_reason(exc.code, exc.errors)}"
    if isinstance(exc, RetryError) and exc.cause is not None:
        return f"RetryError (last attempt: {described(exc.cause)})"
    return exc.__class__.__name__


def error_reason(code: int | None, errors: Any) -> str:
    """The first error reason of a Google error body that is a plain word, else the HTTP status phrase."""
    reasons = [error.get("reason") for error in errors or () if isinstance(error, dict)]
    reason = next((r for r in reasons if isinstance(r, str) and _ERROR_REASON.fullmatch(r)), None)
    return reason or http.client.responses.get(code or 0, "refused")


def without_names(text: str, names: Iterable[str]) -> str:
    """``text`` with each of ``names`` (plain, percent-encoded in any case or mix, ``+`` for spaces) removed."""
    for name in sorted({name for name in names if name}, key=len, reverse=True):
        text = re.sub(_spellings(name), NAME_REMOVED, text, flags=re.IGNORECASE)
    return text


def _spellings(name: str) -> str:
    """A pattern matching ``name`` however a URL spells it: each character itself or percent-encoded."""
    parts = []
    for char in name:
        encoded = "".join(f"%{byte:02X}" for byte in char.encode())
        plus = r"|\+" if char == " " else ""
        parts.append(f"(?:{re.escape(char)}|{encoded}{plus})")
    return "".join(parts)
