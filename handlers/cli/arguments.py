"""Value types for the commands' options: counts and durations, refused with the format they take."""

from __future__ import annotations

import argparse
import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def positive_int(text: str) -> int:
    """A count of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` or plain seconds -> seconds."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: write a number and s, m, h or d, "
                                         "e.g. 90m, 24h or 7d")
    return float(found.group(1)) * _UNITS[found.group(2)]
