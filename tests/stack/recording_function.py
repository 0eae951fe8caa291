"""Stand-in function source for the stack's own tests: the three entry points of main.py,
each appending what it receives to ``$RECORD_FILE`` (one JSON line per CloudEvent).

Answers 500 while ``$FAIL_FILE`` exists, to exercise redelivery.
"""

import json
import os
import threading

import functions_framework

_lock = threading.Lock()


def _record(entry_point, cloud_event):
    if os.path.exists(os.environ.get("FAIL_FILE", "/nonexistent")):
        raise RuntimeError("failing on purpose: FAIL_FILE exists")
    line = json.dumps({"entry_point": entry_point, "attributes": dict(cloud_event.get_attributes()), "data": cloud_event.get_data()})
    with _lock, open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


@functions_framework.cloud_event
def on_object_finalized(cloud_event):
    _record("on_object_finalized", cloud_event)


@functions_framework.cloud_event
def on_followup(cloud_event):
    _record("on_followup", cloud_event)


@functions_framework.cloud_event
def on_export_request(cloud_event):
    _record("on_export_request", cloud_event)
