"""The DICOM gateway: a C-STORE receiver that lands every instance in the inbox bucket, losing none.

A separate deployable (a VM or GKE near the modalities, not a Cloud Function):
``python -m gateway --config FILE``. Modules, top-down: ``service`` wires
``scp`` (pynetdicom: associations, C-ECHO, C-STORE) to ``spool`` (durable
segments, group commit), ``uploader`` (threads, retries) and ``inbox`` (one
upload per distinct instance), with ``health`` (``/healthz``, stats), ``config``
(the YAML file) and ``naming`` (object names). docs/gateway.md is the guide.
"""
