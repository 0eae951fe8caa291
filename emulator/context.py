"""The emulator's state, shared by the HTTP layer and the operation threads."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Callable

from emulator.cloudlogging import CloudLogging
from emulator.faults import FaultConfig, Faults
from emulator.gcs import Gcs
from emulator.logs import LogBook
from emulator.operations import Operations
from emulator.resources import Registry
from emulator.settings import LiveSettings, Settings


class Stats:
    """Requests received, per method id (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._injected: Counter[str] = Counter()

    def request(self, method_id: str) -> None:
        with self._lock:
            self._requests[method_id] += 1

    def injected(self, method_id: str, http_status: int) -> None:
        with self._lock:
            self._injected[f"{method_id}:{http_status}"] += 1

    def requests(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._requests.items()))

    def injected_errors(self) -> dict[str, dict[str, int]]:
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for key, count in sorted(self._injected.items()):
                method, status = key.rsplit(":", 1)
                out.setdefault(method, {})[status] = count
            return out

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._injected.clear()


class Emulator:
    """Resources, operations, logs, Cloud Logging entries, faults, settings and statistics of one emulator process."""

    def __init__(
        self,
        *,
        faults: FaultConfig | None = None,
        settings: Settings | None = None,
        log: LogBook | None = None,
        gcs_factory: Callable[[], Gcs] = Gcs.from_env,
    ) -> None:
        self.registry = Registry()
        self.operations = Operations()
        self.log = log or LogBook()
        self.cloud_logging = CloudLogging()
        self.initial_faults = faults or FaultConfig(None, {})
        self.faults = Faults(self.initial_faults)
        self.settings = LiveSettings(settings or Settings())
        self.stats = Stats()
        self.gcs_factory = gcs_factory

    def reset(self, *, everything: bool = False) -> None:
        """Drop datasets, stores, instances, operations, logs (and Cloud Logging entries) and stats.

        Faults and settings stay as they are, unless ``everything``: then they
        go back to what the emulator started with.
        """
        self.operations.clear()
        self.registry.clear()
        self.log.clear()
        self.cloud_logging.clear()
        self.stats.clear()
        if everything:
            self.faults.set(self.initial_faults)
            self.settings.restore()
