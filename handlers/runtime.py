"""The collaborators an instance shares across requests, built on first use.

Nothing heavy happens at import time: the config is read and the Google
clients are imported when the first event arrives (cold start stays short).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

from handlers import config as config_module
from handlers.batch import followups
from handlers.batch.driver import Driver
from handlers.batch.intake import Intake
from handlers.batch.reporting import Reporter
from handlers.clients.cloudlogging import CloudLogging
from handlers.clients.healthcare import HealthcareApi
from handlers.clients.pubsub import Publisher
from handlers.clients.storage import GcsSource, GcsStateStore
from handlers.config import Config
from handlers.exports.job import ExportJob
from handlers.failures.collect import DEFAULT_VERIFY_SECONDS, DEFAULT_WAIT_SECONDS
from handlers.reconcile.sweep import Sweeper
from handlers.settings import seconds


@dataclass
class Runtime:
    config: Config

    @cached_property
    def state(self) -> GcsStateStore:
        return GcsStateStore(self.config.state_bucket)

    @cached_property
    def publisher(self) -> Publisher:
        return Publisher()

    @cached_property
    def api(self) -> HealthcareApi:
        return HealthcareApi()

    @cached_property
    def logging(self) -> CloudLogging:
        return CloudLogging()

    @cached_property
    def intake(self) -> Intake:
        return Intake(self.state, self.config, kick=self.kick_batch)

    @cached_property
    def driver(self) -> Driver:
        return Driver(self.state, self.config, self.api, self.publisher, self.logging, self.kick_batch,
                      failure_logs_wait_seconds=seconds("FAILURE_LOGS_WAIT_SECONDS", DEFAULT_WAIT_SECONDS),
                      failure_verify_seconds=seconds("FAILURE_VERIFY_SECONDS", DEFAULT_VERIFY_SECONDS))

    @cached_property
    def exports(self) -> ExportJob:
        reporter = Reporter(self.state, self.publisher, self.config.results_topic)
        return ExportJob(self.state, self.api, reporter, deadline_hours=self.config.followup_deadline_hours,
                         destinations=self.config.exports.destinations,
                         config_path=config_module.shown_path(self.config.path),
                         max_query_results=self.config.exports.max_query_results,
                         hashed_names=self.config.names.hashed)

    @cached_property
    def reconciler(self) -> Sweeper:
        reporter = Reporter(self.state, self.publisher, self.config.results_topic)
        return Sweeper(self.state, GcsSource(), self.config, self.intake, reporter)

    def kick_batch(self, rule: str, batch: str) -> None:
        """Publish the follow-up message that drives a batch to its end."""
        data, attributes = followups.batch_message(rule, batch)
        self.publisher.publish(self.config.followup_topic, data, attributes)


_lock = threading.Lock()
_runtime: Runtime | None = None


def get() -> Runtime:
    """This instance's runtime; raises ConfigError (every problem listed) when the config is invalid."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(config_module.load(config_module.default_path()))
            _prime(_runtime)
        return _runtime


def loaded() -> Runtime | None:
    """This instance's runtime if an event built it already (never reads the config)."""
    with _lock:
        return _runtime


def _prime(runtime: Runtime) -> None:
    """Build the shared clients once, under the lock, so concurrent first requests don't race."""
    runtime.state, runtime.publisher, runtime.api, runtime.logging, runtime.intake, runtime.driver, runtime.exports  # noqa: B018


def reset() -> None:
    """Forget the runtime (tests change the environment between cases)."""
    global _runtime
    with _lock:
        _runtime = None
