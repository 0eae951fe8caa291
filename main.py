"""Cloud Function entry points (functions-framework, 2nd gen). The logic lives in ``handlers``.

* ``on_object_finalized``: Eventarc ``google.cloud.storage.object.v1.finalized``,
  or a Cloud Storage Pub/Sub notification (``OBJECT_FINALIZE``).
* ``on_followup``: follow-up messages that drive import batches to their published result.
* ``on_export_request``: a JSON export request on Pub/Sub; the result is published like imports'.
* ``on_reconcile``: a Cloud Scheduler tick on Pub/Sub: admit the objects no event announced (docs/reconcile.md).
"""

import functions_framework

from handlers import entrypoints

# A body functions-framework cannot read as a CloudEvent: a 400 and a log line, not a 500 and a traceback.
functions_framework.errorhandler(Exception)(entrypoints.unreadable_request)


@functions_framework.cloud_event
def on_object_finalized(cloud_event):
    entrypoints.object_finalized(cloud_event)


@functions_framework.cloud_event
def on_followup(cloud_event):
    entrypoints.followup(cloud_event)


@functions_framework.cloud_event
def on_export_request(cloud_event):
    entrypoints.export_request(cloud_event)


@functions_framework.cloud_event
def on_reconcile(cloud_event):
    entrypoints.reconcile(cloud_event)
