"""A small client for the Pub/Sub emulator's REST API (v1), as the stack and the bridge use it.

REST over ``requests`` rather than google-cloud-pubsub: no gRPC threads, plain
timeouts, and a pull that survives the emulator being stopped and restarted.
Resource names are full paths (``projects/P/topics/T``, ``projects/P/subscriptions/S``).
"""

from __future__ import annotations

import base64
import threading
from typing import Any, Mapping, Sequence

import requests

__all__ = ["PubSubError", "PubSubRest"]


class PubSubError(RuntimeError):
    """The emulator answered with an error, or could not be reached (``status`` is None then)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PubSubRest:
    """REST calls to the Pub/Sub emulator at ``host`` (``127.0.0.1:PORT``). Thread-safe."""

    def __init__(self, host: str, timeout: float = 30.0) -> None:
        self.base = f"http://{host}/v1"
        self.timeout = timeout
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
        return session

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None, timeout: float | None = None) -> dict[str, Any]:
        """One REST call; returns the JSON answer or raises :class:`PubSubError`."""
        url = f"{self.base}/{path}"
        try:
            response = self._session().request(method, url, json=body, timeout=timeout or self.timeout)
        except requests.RequestException as exc:
            raise PubSubError(f"Pub/Sub emulator unreachable ({method} {url}): {exc}") from exc
        if response.status_code >= 300:
            raise PubSubError(f"{method} {url}: HTTP {response.status_code}: {response.text.strip()[:300]}", response.status_code)
        return response.json() if response.content else {}

    def create_topic(self, topic: str) -> bool:
        """Create ``topic``; False if it already existed."""
        try:
            self.call("PUT", topic)
        except PubSubError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def create_subscription(self, subscription: str, topic: str, ack_deadline: int = 60) -> bool:
        """Create a pull subscription on ``topic``; False if it already existed."""
        try:
            self.call("PUT", subscription, {"topic": topic, "ackDeadlineSeconds": ack_deadline})
        except PubSubError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def exists(self, name: str) -> bool:
        """True if the topic or subscription ``name`` exists."""
        try:
            self.call("GET", name)
        except PubSubError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        """Publish one message; return its message ID."""
        message: dict[str, Any] = {"data": base64.b64encode(data).decode("ascii")}
        if attributes:
            message["attributes"] = dict(attributes)
        return str(self.call("POST", f"{topic}:publish", {"messages": [message]})["messageIds"][0])

    def pull(self, subscription: str, max_messages: int, wait: bool = True, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Pull up to ``max_messages`` ``receivedMessages`` (``ackId``, ``message``).

        With ``wait`` the emulator holds the request until a message arrives (or
        about 90 s pass), like a streaming pull would.
        """
        body = {"maxMessages": max_messages, "returnImmediately": not wait}
        return list(self.call("POST", f"{subscription}:pull", body, timeout=timeout).get("receivedMessages", []))

    def acknowledge(self, subscription: str, ack_ids: Sequence[str]) -> None:
        """Acknowledge delivered messages."""
        if ack_ids:
            self.call("POST", f"{subscription}:acknowledge", {"ackIds": list(ack_ids)})

    def modify_ack_deadline(self, subscription: str, ack_ids: Sequence[str], seconds: int) -> None:
        """Set the ack deadline of held messages to ``seconds`` from now."""
        if ack_ids:
            self.call("POST", f"{subscription}:modifyAckDeadline", {"ackIds": list(ack_ids), "ackDeadlineSeconds": seconds})
