"""The environment the repository's config.yaml needs, for tests that load it."""

CONFIG_ENV = {
    "DICOM_STORE": "projects/p/locations/l/datasets/d/dicomStores/s",
    "INBOX_BUCKET": "inbox-bkt",
    "STATE_BUCKET": "state-bkt",
    "RESULTS_TOPIC": "projects/p/topics/results",
    "FOLLOWUP_TOPIC": "projects/p/topics/followups",
}
