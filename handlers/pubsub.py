"""Publishing JSON messages to Pub/Sub (client loaded on first use)."""

from __future__ import annotations

import json
import threading
from typing import Any, Mapping

PUBLISH_TIMEOUT = 60.0


class Publisher:
    """Publishes JSON data with string attributes; raises on failure so callers can retry."""

    def __init__(self, client: Any = None) -> None:
        self._client = client
        self._lock = threading.Lock()

    def _publisher(self) -> Any:
        with self._lock:
            if self._client is None:
                from google.cloud import pubsub_v1

                self._client = pubsub_v1.PublisherClient()
            return self._client

    def publish(self, topic: str, data: Mapping[str, Any], attributes: Mapping[str, str], timeout: float = PUBLISH_TIMEOUT) -> str:
        payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        future = self._publisher().publish(topic, payload, **{k: str(v) for k, v in attributes.items()})
        return str(future.result(timeout=timeout))
