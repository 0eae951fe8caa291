"""Typed views of the events that start the function.

Two deliveries announce a new object: the Eventarc storage CloudEvent
(``google.cloud.storage.object.v1.finalized``) and a Cloud Storage Pub/Sub
notification (``OBJECT_FINALIZE``) arriving as
``google.cloud.pubsub.topic.v1.messagePublished``. Both become a
:class:`StorageObject`; anything else raises :class:`UnusableEvent`, which the
entry points acknowledge (a retry cannot fix it).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Mapping

STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
MAX_NAME_BYTES = 1024


class UnusableEvent(ValueError):
    """An event that no retry can make useful: acknowledged with this reason."""


@dataclass(frozen=True)
class StorageObject:
    """One finalized object generation, as announced by an event."""

    bucket: str
    name: str
    generation: str
    size: int | None
    event_id: str

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


@dataclass(frozen=True)
class PubSubMessage:
    """The message inside a ``messagePublished`` CloudEvent."""

    data: bytes
    attributes: Mapping[str, str]
    message_id: str


def _attr(event: Any, key: str) -> str:
    try:
        value = event[key]
    except (KeyError, TypeError):
        return ""
    return value if isinstance(value, str) else ""


def pubsub_message(event: Any) -> PubSubMessage:
    """The Pub/Sub message of a ``messagePublished`` CloudEvent."""
    if _attr(event, "type") != PUBSUB_PUBLISHED:
        raise UnusableEvent(f"event type {_attr(event, 'type')!r} is not {PUBSUB_PUBLISHED}")
    data = getattr(event, "data", None)
    message = data.get("message") if isinstance(data, dict) else None
    if not isinstance(message, dict):
        raise UnusableEvent("messagePublished event has no 'message' object in its data")
    encoded = message.get("data") or ""
    try:
        raw = base64.b64decode(encoded, validate=True) if encoded else b""
    except (binascii.Error, ValueError, TypeError):
        raise UnusableEvent("message.data is not valid base64") from None
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise UnusableEvent("message.attributes is not an object")
    message_id = message.get("messageId") or message.get("message_id") or _attr(event, "id")
    return PubSubMessage(raw, {str(k): str(v) for k, v in attributes.items()}, str(message_id))


def storage_object(event: Any) -> StorageObject:
    """The object a finalize event announces; :class:`UnusableEvent` otherwise."""
    kind = _attr(event, "type")
    if kind == STORAGE_FINALIZED:
        resource = getattr(event, "data", None)
        if not isinstance(resource, dict):
            raise UnusableEvent("storage event has no JSON object resource as data")
        return _from_resource(resource, _attr(event, "id"))
    if kind == PUBSUB_PUBLISHED:
        return _from_notification(pubsub_message(event))
    raise UnusableEvent(f"event type {kind or '(none)'!r} is not an object finalize event: nothing to import")


def _from_notification(message: PubSubMessage) -> StorageObject:
    event_type = message.attributes.get("eventType", "")
    if event_type != "OBJECT_FINALIZE":
        raise UnusableEvent(f"notification eventType {event_type or '(none)'!r} is not OBJECT_FINALIZE")
    resource: dict[str, Any] = {}
    if message.data:
        try:
            decoded = json.loads(message.data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UnusableEvent("notification data is not the JSON object resource (payloadFormat JSON_API_V1)") from None
        if not isinstance(decoded, dict):
            raise UnusableEvent("notification data is not a JSON object")
        resource = decoded
    resource.setdefault("bucket", message.attributes.get("bucketId"))
    resource.setdefault("name", message.attributes.get("objectId"))
    resource.setdefault("generation", message.attributes.get("objectGeneration"))
    return _from_resource(resource, message.message_id)


def _from_resource(resource: Mapping[str, Any], event_id: str) -> StorageObject:
    bucket, name, generation = resource.get("bucket"), resource.get("name"), resource.get("generation")
    if not isinstance(bucket, str) or not bucket:
        raise UnusableEvent("event data has no 'bucket'")
    if not isinstance(name, str) or not name:
        raise UnusableEvent("event data has no object 'name'")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise UnusableEvent(f"object name is longer than {MAX_NAME_BYTES} bytes, which Cloud Storage does not allow")
    generation_text = str(generation) if generation is not None else ""
    if not (generation_text.isascii() and generation_text.isdecimal()):
        raise UnusableEvent(f"event data has no valid 'generation' (got {generation!r})")
    size = resource.get("size")
    try:
        size_value = int(size) if size is not None else None
    except (TypeError, ValueError):
        size_value = None
    return StorageObject(bucket, name, generation_text, size_value, event_id or "")
