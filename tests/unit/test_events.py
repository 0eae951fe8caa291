"""Finalize events: Eventarc storage CloudEvents and GCS Pub/Sub notifications."""

import base64
import json

import pytest
from cloudevents.http import CloudEvent

from handlers.events import UnusableEvent, pubsub_message, storage_object

RESOURCE = {"bucket": "inbox-bkt", "name": "study 1/ä#*?.dcm", "generation": "1712345678901234", "size": "1234",
            "contentType": "application/dicom"}


def storage_event(data, type_="google.cloud.storage.object.v1.finalized"):
    return CloudEvent({"type": type_, "source": "//storage.googleapis.com/projects/_/buckets/inbox-bkt",
                       "subject": "objects/x", "id": "evt-1"}, data)


def notification(attributes, data=RESOURCE):
    message = {"attributes": attributes, "messageId": "msg-9"}
    if data is not None:
        message["data"] = base64.b64encode(json.dumps(data).encode()).decode()
    return CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished",
                       "source": "//pubsub.googleapis.com/projects/p/topics/t", "id": "ps-1"},
                      {"message": message, "subscription": "projects/p/subscriptions/s"})


def test_eventarc_storage_event():
    obj = storage_object(storage_event(RESOURCE))
    assert (obj.bucket, obj.name, obj.generation, obj.size, obj.event_id) == (
        "inbox-bkt", "study 1/ä#*?.dcm", "1712345678901234", 1234, "evt-1")
    assert obj.uri == "gs://inbox-bkt/study 1/ä#*?.dcm"


def test_gcs_pubsub_notification_with_json_payload():
    obj = storage_object(notification({"eventType": "OBJECT_FINALIZE", "bucketId": "inbox-bkt"}))
    assert (obj.bucket, obj.name, obj.generation, obj.event_id) == ("inbox-bkt", RESOURCE["name"], RESOURCE["generation"], "msg-9")


def test_gcs_pubsub_notification_without_payload_uses_attributes():
    attrs = {"eventType": "OBJECT_FINALIZE", "bucketId": "inbox-bkt", "objectId": "a.dcm", "objectGeneration": "5"}
    obj = storage_object(notification(attrs, data=None))
    assert (obj.bucket, obj.name, obj.generation) == ("inbox-bkt", "a.dcm", "5")


@pytest.mark.parametrize(
    "event, reason",
    [
        (storage_event(RESOURCE, "google.cloud.storage.object.v1.deleted"), "not an object finalize event"),
        (storage_event("not json"), "no JSON object resource"),
        (storage_event({**RESOURCE, "bucket": ""}), "no 'bucket'"),
        (storage_event({k: v for k, v in RESOURCE.items() if k != "name"}), "no object 'name'"),
        (storage_event({**RESOURCE, "generation": "abc"}), "no valid 'generation'"),
        # digits to str.isdigit() and int(), but no generation: int("²") raises, int("١٢") is 12
        (storage_event({**RESOURCE, "generation": "²"}), "no valid 'generation'"),
        (storage_event({**RESOURCE, "generation": "١٢"}), "no valid 'generation'"),
        (storage_event({**RESOURCE, "name": "x" * 1025}), "longer than 1024 bytes"),
        (notification({"eventType": "OBJECT_DELETE"}), "is not OBJECT_FINALIZE"),
        (notification({"eventType": "OBJECT_FINALIZE"}, data=[1, 2]), "not a JSON object"),
    ],
)
def test_unusable_events_say_why(event, reason):
    with pytest.raises(UnusableEvent, match=reason):
        storage_object(event)


def test_truncated_base64_is_unusable():
    event = CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "s", "id": "1"},
                       {"message": {"data": "eyJh=x", "attributes": {}}})
    with pytest.raises(UnusableEvent, match="not valid base64"):
        pubsub_message(event)


def test_name_of_exactly_1024_bytes_is_accepted():
    name = "é" * 512
    assert storage_object(storage_event({**RESOURCE, "name": name})).name == name
