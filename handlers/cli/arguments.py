"""Value types for the commands' options: counts and durations, refused with the format they take."""

from __future__ import annotations

import argparse
import math
import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: The longest duration an option takes: longer would overflow the date arithmetic of a window.
MAX_DURATION_DAYS = 3650


def positive_int(text: str) -> int:
    """A count of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_number(text: str) -> float:
    """A finite number of at least 0 (a price, an average)."""
    value = float(text)
    if not 0 <= value < math.inf:  # nan fails too
        raise argparse.ArgumentTypeError(f"must be a number of at least 0, got {text}")
    return value


def positive_number(text: str) -> float:
    """A finite number above 0."""
    value = non_negative_number(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` or plain seconds -> seconds, from 0 to :data:`MAX_DURATION_DAYS` days."""
    seconds = unbounded_duration(text)
    if seconds > MAX_DURATION_DAYS * 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is too long: give at most {MAX_DURATION_DAYS}d")
    return seconds


def unbounded_duration(text: str) -> float:
    """:func:`duration` without its upper bound (for an option with its own); may be ``inf``."""
    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"{text!r} is negative: give a duration of 0 or more, e.g. 90s, 30m or 24h")
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: write a number and s, m, h or d, "
                                         "e.g. 90m, 24h or 7d")
    return float(found.group(1)) * _UNITS[found.group(2)]
