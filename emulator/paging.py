"""``pageSize`` / ``pageToken`` for list methods (opaque tokens, 400 on bad input)."""

from __future__ import annotations

import base64
import json
from typing import Sequence, TypeVar

from emulator.errors import invalid

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def parse_page_size(raw: str | None, default: int = DEFAULT_PAGE_SIZE) -> int:
    """The page size; absent or 0 means the default (100); more than 1000 is refused, as documented."""
    if raw in (None, ""):
        return default
    try:
        size = int(raw)
    except ValueError:
        raise invalid(f"pageSize must be an integer, got {raw!r}", field="page_size") from None
    if size < 0 or size > MAX_PAGE_SIZE:
        raise invalid(f"pageSize must be between 0 and {MAX_PAGE_SIZE}, got {size}", field="page_size")
    return size or default


def _token(listing: str, offset: int) -> str:
    raw = json.dumps({"l": listing, "o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _offset(listing: str, token: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        offset = int(data["o"])
        same = data["l"] == listing
    except (ValueError, KeyError, TypeError, OverflowError):
        same, offset = False, -1
    if not same or offset < 0:
        raise invalid(
            f"pageToken {token!r} is not a token returned by this list: pass nextPageToken from the previous page",
            field="page_token",
        )
    return offset


def page(items: Sequence[T], listing: str, page_size: str | None, page_token: str | None,
         default: int = DEFAULT_PAGE_SIZE) -> tuple[list[T], str]:
    """One page of ``items`` and the next page's token ('' on the last page).

    ``listing`` names the collection, so a token from one list is refused by another.
    """
    size = parse_page_size(page_size, default)
    start = _offset(listing, page_token) if page_token else 0
    chunk = list(items[start : start + size])
    more = start + size < len(items)
    return chunk, _token(listing, start + size) if more else ""
