"""The publisher stops the client's own retries before it stops waiting (no late duplicate)."""

import json

from handlers.clients import pubsub
from handlers.clients.pubsub import Publisher


class RecordingClient:
    def __init__(self):
        self.calls = []

    def publish(self, topic, data, retry=None, timeout=None, **attributes):
        self.calls.append((topic, data, retry, timeout, attributes))

        class Done:
            def result(self, timeout=None):
                RecordingClient.waited = timeout
                return "42"

        return Done()


def test_client_retries_end_before_the_publisher_stops_waiting():
    client = RecordingClient()
    assert Publisher(client).publish("projects/p/topics/t", {"a": "é"}, {"outcome": "SUCCEEDED", "n": 3}) == "42"
    [(topic, data, retry, timeout, attributes)] = client.calls
    assert topic == "projects/p/topics/t" and json.loads(data) == {"a": "é"}
    assert attributes == {"outcome": "SUCCEEDED", "n": "3"}
    assert retry is not None and retry.timeout == timeout == pubsub.CLIENT_DEADLINE
    assert pubsub.CLIENT_DEADLINE < RecordingClient.waited == pubsub.PUBLISH_TIMEOUT
