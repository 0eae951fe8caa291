"""Tuning numbers the functions read from their environment (deploy.sh sets them).

A value that cannot be used must not fail every delivery (each would answer 503
and be retried until dead-lettered): the default is used instead, and a WARNING
names the variable, the value and what it takes.
"""

from __future__ import annotations

import math
import os

from handlers import log


def seconds(variable: str, default: float, minimum: float = 0.0) -> float:
    """``$variable`` as a number of seconds (at least ``minimum``), or ``default`` when unset or unusable."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value >= minimum:
        return value
    log.warning(f"{variable} is not a usable number of seconds: using the default",
                variable=variable, value=text, default=default,
                fix=f"set {variable} to a plain number of seconds, {minimum:g} or more (e.g. {default:g}), and redeploy")
    return default
