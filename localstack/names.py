"""Names of the local resources and the environment keys of docs/contracts.md, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["CONTRACT_KEYS", "REPO_ROOT", "Names"]

#: The repository root (this package's parent directory).
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Every key of docs/contracts.md's environment table, in its order.
CONTRACT_KEYS: tuple[str, ...] = (
    "GOOGLE_CLOUD_PROJECT",
    "STORAGE_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
    "HEALTHCARE_EMULATOR_HOST",
    "LOGGING_EMULATOR_HOST",
    "FUNCTION_URL",
    "FOLLOWUP_URL",
    "EXPORT_URL",
    "INBOX_BUCKET",
    "STATE_BUCKET",
    "EXPORT_BUCKET",
    "DICOM_STORE",
    "RESULTS_TOPIC",
    "RESULTS_SUBSCRIPTION",
    "FOLLOWUP_TOPIC",
    "EXPORT_REQUESTS_TOPIC",
    "NOTIFICATIONS_TOPIC",
    "DICOM_IMPORT_CONFIG",
    "GATEWAY_HOST",
    "GATEWAY_PORT",
    "GATEWAY_AE_TITLE",
    "GATEWAY_CALLING_AE_TITLE",
    "GATEWAY_COMMITMENT_PORT",
    "CLOUDSDK_CONFIG",
)


@dataclass(frozen=True)
class Names:
    """Project, buckets, topics, subscriptions, dataset and store of the local stack.

    The defaults are what config.yaml and docs/contracts.md name.
    """

    project: str = "local-project"
    location: str = "us-central1"
    dataset: str = "local-dataset"
    store: str = "local-store"
    inbox_bucket: str = "dicom-inbox"
    state_bucket: str = "dicom-import-state"
    export_bucket: str = "dicom-exports"
    notifications_topic: str = "gcs-notifications"
    results_topic: str = "dicom-import-results"
    followup_topic: str = "dicom-import-followups"
    export_requests_topic: str = "dicom-export-requests"
    results_subscription: str = "dicom-import-results-tail"
    #: Pull subscriptions the bridge reads, one per route.
    notifications_bridge_subscription: str = "gcs-notifications-to-function"
    followup_bridge_subscription: str = "dicom-import-followups-to-function"
    export_bridge_subscription: str = "dicom-export-requests-to-function"
    #: The DICOM gateway: its AE title, the one AE title it accepts, where it writes in the inbox.
    gateway_ae_title: str = "DICOM-GCS"
    gateway_calling_ae_title: str = "LOCAL-SCU"
    gateway_prefix: str = "modalities/"

    @property
    def buckets(self) -> tuple[str, ...]:
        """Every bucket the stack creates."""
        return (self.inbox_bucket, self.state_bucket, self.export_bucket)

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic the stack creates (short names)."""
        return (self.notifications_topic, self.results_topic, self.followup_topic, self.export_requests_topic)

    @property
    def subscriptions(self) -> dict[str, str]:
        """Every subscription the stack creates: short name -> short topic name."""
        return {
            self.results_subscription: self.results_topic,
            self.notifications_bridge_subscription: self.notifications_topic,
            self.followup_bridge_subscription: self.followup_topic,
            self.export_bridge_subscription: self.export_requests_topic,
        }

    def topic_path(self, topic: str) -> str:
        """``projects/P/topics/T``."""
        return f"projects/{self.project}/topics/{topic}"

    def subscription_path(self, subscription: str) -> str:
        """``projects/P/subscriptions/S``."""
        return f"projects/{self.project}/subscriptions/{subscription}"

    @property
    def dataset_path(self) -> str:
        """``projects/P/locations/L/datasets/D``."""
        return f"projects/{self.project}/locations/{self.location}/datasets/{self.dataset}"

    @property
    def store_path(self) -> str:
        """The full DICOM store name (``DICOM_STORE``)."""
        return f"{self.dataset_path}/dicomStores/{self.store}"

    def resource_env(self) -> dict[str, str]:
        """The contract keys that depend only on names, not on ports."""
        return {
            "GOOGLE_CLOUD_PROJECT": self.project,
            "INBOX_BUCKET": self.inbox_bucket,
            "STATE_BUCKET": self.state_bucket,
            "EXPORT_BUCKET": self.export_bucket,
            "DICOM_STORE": self.store_path,
            "RESULTS_TOPIC": self.topic_path(self.results_topic),
            "RESULTS_SUBSCRIPTION": self.subscription_path(self.results_subscription),
            "FOLLOWUP_TOPIC": self.topic_path(self.followup_topic),
            "EXPORT_REQUESTS_TOPIC": self.topic_path(self.export_requests_topic),
            "NOTIFICATIONS_TOPIC": self.topic_path(self.notifications_topic),
        }
