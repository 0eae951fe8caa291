"""Fault injection: error rates, latency, slow and failing operations, per method.

Off by default. Set with ``HEALTHCARE_EMULATOR_FAULTS`` (JSON) at start, or
``PUT /emulator/faults`` at run time. The JSON (every field optional)::

    {
      "seed": 42,
      "methods": {
        "*":                  {"latencySeconds": 0.01},
        "dicomStores.import": {"rate429": 0.2, "rate503": 0.1,
                               "minOperationSeconds": 2.0,
                               "failOperation": {"code": 13, "message": "boom"},
                               "logDelaySeconds": 5, "logSampleAbove": 10},
        "operations.get":     {"rate503": 0.05}
      }
    }

Method ids are the discovery document's, without the
``healthcare.projects.locations.datasets.`` prefix (``dicomStores.import``,
``operations.get``...). ``*`` applies to every method; a method's own entry
overrides it field by field. ``failOperation`` may also be ``true`` (code 13) or
``false`` (off, e.g. to exempt one method from a ``*`` entry).
``logDelaySeconds`` and ``logSampleAbove`` shape the per-file Cloud Logging
entries of the operations a method starts (emulator.cloudlogging).
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, replace
from typing import Any, Mapping

from emulator.errors import CANONICAL, INTERNAL

_FIELDS = {
    "rate429": "rate429",
    "rate503": "rate503",
    "latencySeconds": "latency_seconds",
    "minOperationSeconds": "min_operation_seconds",
    "failOperation": "fail_operation",
    "logDelaySeconds": "log_delay_seconds",
    "logSampleAbove": "log_sample_above",
}


class FaultSpecError(ValueError):
    """A fault configuration that cannot be applied; the message names the field."""


@dataclass(frozen=True)
class FailOperation:
    code: int = INTERNAL
    message: str = "operation failure injected by the emulator (faults: failOperation)"


@dataclass(frozen=True)
class MethodFaults:
    """The faults that apply to one method (after merging ``*``)."""

    rate429: float | None = None
    rate503: float | None = None
    latency_seconds: float | None = None
    min_operation_seconds: float | None = None
    fail_operation: FailOperation | bool | None = None  # False: explicitly off (overrides "*")
    log_delay_seconds: float | None = None  # per-file Cloud Logging entries listed only this long after written
    log_sample_above: int | None = None  # an operation writes at most this many per-file entries

    @property
    def failure(self) -> FailOperation | None:
        """The forced operation failure, if any."""
        return self.fail_operation if isinstance(self.fail_operation, FailOperation) else None

    def over(self, base: "MethodFaults") -> "MethodFaults":
        """This entry's fields where set, ``base``'s elsewhere."""
        return replace(base, **{name: value for name, value in vars(self).items() if value is not None})

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, name in _FIELDS.items():
            value = getattr(self, name)
            if value is None:
                continue
            out[key] = {"code": value.code, "message": value.message} if isinstance(value, FailOperation) else value
        return out


NO_FAULTS = MethodFaults()


def _number(value: Any, where: str, upper: float | None = None) -> float:
    """``value`` as a float in [0, upper]; NaN and infinities (which JSON parsers accept) are out of range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FaultSpecError(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (upper is not None and value > upper):
        bound = f"between 0 and {upper}" if upper is not None else "0 or more"
        raise FaultSpecError(f"{where} must be {bound}, got {value!r}")
    return float(value)


def _fail_operation(value: Any, where: str) -> FailOperation | bool:
    if value is False:
        return False
    if value is True:
        return FailOperation()
    if not isinstance(value, Mapping):
        raise FaultSpecError(f"{where} must be true, false or {{\"code\": 13, \"message\": \"...\"}}, got {value!r}")
    unknown = set(value) - {"code", "message"}
    if unknown:
        raise FaultSpecError(f"{where} has unknown field(s) {sorted(unknown)}: use code and message")
    code = value.get("code", INTERNAL)
    if isinstance(code, bool) or not isinstance(code, int) or code not in CANONICAL:
        raise FaultSpecError(f"{where}.code must be a canonical error code 1-16 (13 INTERNAL, 14 UNAVAILABLE...), got {code!r}")
    message = value.get("message", FailOperation.message)
    if not isinstance(message, str) or not message:
        raise FaultSpecError(f"{where}.message must be a non-empty string")
    return FailOperation(code, message)


def parse_method(spec: Any, where: str) -> MethodFaults:
    if not isinstance(spec, Mapping):
        raise FaultSpecError(f"{where} must be an object, got {spec!r}")
    unknown = set(spec) - set(_FIELDS)
    if unknown:
        raise FaultSpecError(f"{where} has unknown field(s) {sorted(unknown)}: allowed are {sorted(_FIELDS)}")
    values: dict[str, Any] = {}
    for key in ("rate429", "rate503"):
        if key in spec:
            values[_FIELDS[key]] = _number(spec[key], f"{where}.{key}", upper=1.0)
    for key in ("latencySeconds", "minOperationSeconds", "logDelaySeconds"):
        if key in spec:
            values[_FIELDS[key]] = _number(spec[key], f"{where}.{key}", upper=600.0)
    if "logSampleAbove" in spec:
        above = spec["logSampleAbove"]
        if isinstance(above, bool) or not isinstance(above, int) or above < 0:
            raise FaultSpecError(f"{where}.logSampleAbove must be an integer, 0 or more, got {above!r}")
        values["log_sample_above"] = above
    if "failOperation" in spec:
        values["fail_operation"] = _fail_operation(spec["failOperation"], f"{where}.failOperation")
    faults = MethodFaults(**values)
    if (faults.rate429 or 0.0) + (faults.rate503 or 0.0) > 1.0:
        raise FaultSpecError(f"{where}: rate429 + rate503 must not exceed 1")
    return faults


@dataclass(frozen=True)
class FaultConfig:
    seed: int | None
    methods: Mapping[str, MethodFaults]

    @classmethod
    def parse(cls, spec: Any) -> "FaultConfig":
        """Validate the JSON described in the module docstring."""
        if spec is None:
            return cls(None, {})
        if not isinstance(spec, Mapping):
            raise FaultSpecError(f"the fault configuration must be a JSON object, got {spec!r}")
        unknown = set(spec) - {"seed", "methods"}
        if unknown:
            raise FaultSpecError(f"unknown field(s) {sorted(unknown)}: the fault configuration has seed and methods")
        seed = spec.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise FaultSpecError(f"seed must be an integer or null, got {seed!r}")
        methods = spec.get("methods", {})
        if not isinstance(methods, Mapping):
            raise FaultSpecError(f"methods must be an object keyed by method id, got {methods!r}")
        parsed = {}
        for method, entry in methods.items():
            if not isinstance(method, str) or not method:
                raise FaultSpecError("method ids must be non-empty strings such as dicomStores.import or *")
            parsed[method] = parse_method(entry, f"methods[{method!r}]")
        return cls(seed, parsed)

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "methods": {m: f.to_json() for m, f in self.methods.items()}}


class Faults:
    """The live fault configuration, with its random source (thread-safe)."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self._lock = threading.Lock()
        self._config = config or FaultConfig(None, {})
        self._random = random.Random(self._config.seed)

    def set(self, config: FaultConfig) -> None:
        with self._lock:
            self._config = config
            self._random = random.Random(config.seed)

    def clear(self) -> None:
        self.set(FaultConfig(None, {}))

    @property
    def config(self) -> FaultConfig:
        with self._lock:
            return self._config

    def for_method(self, method_id: str) -> MethodFaults:
        config = self.config
        base = config.methods.get("*", NO_FAULTS)
        own = config.methods.get(method_id)
        return own.over(base) if own else base

    def draw_error(self, method_id: str) -> int | None:
        """429, 503 or None, drawn with the configured rates."""
        faults = self.for_method(method_id)
        rate429, rate503 = faults.rate429 or 0.0, faults.rate503 or 0.0
        if rate429 <= 0 and rate503 <= 0:
            return None
        with self._lock:
            draw = self._random.random()
        if draw < rate429:
            return 429
        if draw < rate429 + rate503:
            return 503
        return None
