"""The baseline of bench_e2e.py: one import per file, as the public samples do it.

Each finalize event starts ``dicomStores.import`` for exactly that object,
waits for the operation in the same invocation, and publishes a result in our
schema (one message per object) so the benchmark measures both the same way.
It shares our HTTP client and message code, so the difference measured is the
batching, not the plumbing. Never deployed.
"""

import os
import time

import functions_framework

from handlers.batch.layout import object_id
from handlers.events import storage_object
from handlers.clients.healthcare import HealthcareApi
from handlers.privacy import NamePolicy
from handlers.clients.pubsub import Publisher
from handlers.batch.results import import_message, outcome_of
from handlers.retry import Deadline
from handlers.wildcard import exact_uri

_api = HealthcareApi()
_publisher = Publisher()


@functions_framework.cloud_event
def on_object_finalized(cloud_event):
    obj = storage_object(cloud_event)
    if not obj.name.endswith(".dcm"):
        return
    started = time.time()
    uri, _ = exact_uri(obj.bucket, obj.name)
    store = os.environ["DICOM_STORE"]
    deadline = Deadline(540)
    operation = _api.wait(_api.import_dicom(store, uri, deadline).name, deadline)
    record = {"batch": object_id(obj), "rule": "per-object", "store": store, "importUri": uri, "openedAt": started,
              "sealedAt": started, "importStartedAt": started,
              "members": [{"bucket": obj.bucket, "name": obj.name, "generation": obj.generation}]}
    message, attributes = import_message(record, outcome=outcome_of(operation), names=NamePolicy(),
                                         manifest_uri=uri, operation=operation, concluded_at=time.time())
    _publisher.publish(os.environ["RESULTS_TOPIC"], message, attributes)
