"""Publishing a job's result message exactly once, from a record in the state bucket.

A job (an import batch, an export) freezes its result into its record with one
conditional write (state ``publishing``), publishes it, then marks the record
``done``. Concurrent deliveries see the frozen result and either wait for its
publisher or, past a timeout, take over. Each delivery is its own worker
(:func:`new_worker`), also within one process. Used by ``handlers.batch.driver`` and
``handlers.exports.job``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from handlers import log
from handlers.batch.layout import DONE, PUBLISHING
from handlers.clients.pubsub import Publisher
from handlers.clients.storage import Document, StateStore
from handlers.retry import RetryLater

# A claim on a step older than this is presumed abandoned by a dead instance.
ABANDONED_AFTER_SECONDS = 120.0


def new_worker() -> str:
    """An identity for one delivery: two deliveries in one process are two workers."""
    return uuid.uuid4().hex[:12]


@dataclass
class Reporter:
    store: StateStore
    publisher: Publisher
    topic: str
    clock: Callable[[], float] = time.time

    def frozen(self, data: Mapping[str, Any], message: Mapping[str, Any], attributes: Mapping[str, str],
               worker: str) -> dict[str, Any]:
        """``data`` with the result frozen into it for ``worker`` to publish (state ``publishing``)."""
        return {**data, "state": PUBLISHING, "result": dict(message), "resultAttributes": dict(attributes),
                "publishingSince": self.clock(), "publishingBy": worker}

    def conclude(self, record: Document, path: str, message: Mapping[str, Any], attributes: Mapping[str, str],
                 worker: str) -> Document:
        """Freeze the result into the record for ``worker``; raises Conflict when another got there first."""
        data = self.frozen(record.data, message, attributes, worker)
        return Document(data, self.store.replace(path, data, record.generation))

    def publish(self, record: Document, path: str, worker: str) -> Document:
        """Publish the frozen result and mark the record done; RetryLater when that must wait."""
        data = record.data
        if data.get("publishingBy") != worker:
            if self.clock() - data.get("publishingSince", 0) < ABANDONED_AFTER_SECONDS:
                raise RetryLater(f"another worker is publishing the result of {path}")
            data = {**data, "publishingSince": self.clock(), "publishingBy": worker}
            record = Document(data, self.store.replace(path, data, record.generation))
        try:
            message_id = self.publisher.publish(self.topic, data["result"], data["resultAttributes"])
        except Exception as exc:  # any publish failure: release so the next delivery retries at once
            released = {**data, "publishingSince": 0, "publishingBy": None}
            self.store.replace(path, released, record.generation)
            raise RetryLater(f"results topic unavailable: {exc.__class__.__name__}: {exc}") from None
        done = {**data, "state": DONE, "publishedAt": self.clock(), "resultMessageId": message_id}
        log.info("result published", **published_fields(data["result"], data["resultAttributes"]), record=path)
        return Document(done, self.store.replace(path, done, record.generation))


def published_fields(result: Mapping[str, Any], attributes: Mapping[str, str]) -> dict[str, Any]:
    """The fields of the "result published" log line, which the log-based metrics in ``monitoring/metrics`` read.

    No object names: ``rule``, counters, ``objects`` (how many), the latency ``totalSeconds``
    (first object admitted to result) and, when the result counts them, ``conflicts``.
    """
    conflicts = attributes.get("conflictCount")
    return {
        "schema": result.get("schema"),
        "outcome": result.get("outcome"),
        "rule": result.get("rule"),
        "operation": result.get("operation"),
        "success": result.get("counter", {}).get("success"),
        "failure": result.get("counter", {}).get("failure"),
        "objects": result.get("objectCount"),
        "totalSeconds": (result.get("timings") or {}).get("totalSeconds"),
        "conflicts": int(conflicts) if conflicts is not None and conflicts.isdigit() else None,
    }
