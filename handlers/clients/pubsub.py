"""Publishing JSON messages to Pub/Sub (client loaded on first use)."""

from __future__ import annotations

import json
import threading
from typing import Any, Mapping

# How long one publish may take, the client's own retries included. The client
# gives up a few seconds before we stop waiting, so a publish we report as
# failed is not still being retried in the background (and delivered later,
# after the caller has handed the work to another delivery).
PUBLISH_TIMEOUT = 60.0
CLIENT_DEADLINE = PUBLISH_TIMEOUT - 10.0


class Publisher:
    """Publishes JSON data with string attributes; raises on failure so callers can retry."""

    def __init__(self, client: Any = None) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._retry: Any = None

    def _publisher(self) -> Any:
        with self._lock:
            if self._client is None:
                from google.cloud import pubsub_v1

                self._client = pubsub_v1.PublisherClient()
            if self._retry is None:
                from google.api_core import exceptions, retry

                self._retry = retry.Retry(
                    initial=0.2, maximum=5.0, multiplier=2.0, timeout=CLIENT_DEADLINE,
                    predicate=retry.if_exception_type(exceptions.ServiceUnavailable, exceptions.DeadlineExceeded,
                                                      exceptions.InternalServerError, exceptions.Aborted,
                                                      exceptions.ResourceExhausted, exceptions.Unknown))
            return self._client

    def publish(self, topic: str, data: Mapping[str, Any], attributes: Mapping[str, str]) -> str:
        payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        client = self._publisher()
        future = client.publish(topic, payload, retry=self._retry, timeout=CLIENT_DEADLINE,
                                **{k: str(v) for k, v in attributes.items()})
        return str(future.result(timeout=PUBLISH_TIMEOUT))
