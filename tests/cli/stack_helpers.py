"""What the CLI's stack tests do around a command: their own bucket, store, rule, config and subscription.

Every test gets unique names, so tests share one stack without seeing each
other's data. The CLI runs with a test config whose rules watch the test's own
source bucket (fake-gcs-server sends no events for it, so nothing but the
CLI imports from it) and share the stack's state bucket and topics, so the
stack's follow-up function drives the batches as in production.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import requests

from localstack.pubsub import PubSubRest
from localstack.samples import InstanceUids
from localstack.stack import Stack
from tests.cli.conftest import write_config


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


@dataclass
class Scenario:
    stack: Stack
    env_file: Path
    workdir: Path
    rule: str = field(default_factory=lambda: unique("cli"))
    bucket: str = field(default_factory=lambda: unique("cli-src"))
    store: str = ""
    subscription: str = ""

    def __post_init__(self) -> None:
        env = self.stack.env
        self.state_bucket = env["STATE_BUCKET"]
        self.export_bucket = env["EXPORT_BUCKET"]
        self.store = self.create_store()
        self.storage().create_bucket(self.bucket)
        self.pubsub = PubSubRest(env["PUBSUB_EMULATOR_HOST"])
        self.subscription = f"projects/{env['GOOGLE_CLOUD_PROJECT']}/subscriptions/{unique('cli-results')}"
        self.pubsub.create_subscription(self.subscription, env["RESULTS_TOPIC"])

    # -- config and command line ----------------------------------------------------------
    def config(self, *, match: str = "**.dcm", ignore: Iterable[str] = (), names: str = "plain",
               stores: dict[str, str] | None = None, extra: str = "") -> str:
        """A config whose one rule imports the scenario's bucket into store ``main``; ``stores`` adds aliases,
        ``extra`` sections (YAML text)."""
        ignores = "[" + ", ".join(f"gs://{self.bucket}/{pattern}" for pattern in ignore) + "]"
        rules = f"  - {{name: {self.rule}, match: 'gs://{self.bucket}/{match}', store: main}}\n"
        aliases = "\n  ".join(f"{alias}: {name}" for alias, name in {"main": self.store, **(stores or {})}.items())
        path = write_config(self.workdir / f"{unique('config')}.yaml", rules, ignore=ignores, names=names,
                            stores=aliases, extra=extra)
        return str(path)

    def args(self, config: str, *argv: str) -> list[str]:
        return ["--env-file", str(self.env_file), "--config", config, *argv]

    # -- Cloud Storage --------------------------------------------------------------------
    def storage(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project=self.stack.env["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.stack.env["STORAGE_EMULATOR_HOST"]})

    def upload(self, files: Iterable[tuple[str, bytes]], bucket: str | None = None) -> None:
        target = self.storage().bucket(bucket or self.bucket)
        for name, data in files:
            target.blob(name).upload_from_string(data)

    def names(self, bucket: str, prefix: str) -> list[str]:
        return sorted(blob.name for blob in self.storage().list_blobs(bucket, prefix=prefix))

    def read_text(self, bucket: str, name: str) -> str:
        return self.storage().bucket(bucket).blob(name).download_as_text()

    # -- the Healthcare API emulator -------------------------------------------------------
    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = requests.request(method, f"{self.stack.healthcare.url}/{path}", timeout=30, **kwargs)
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def create_store(self, store_id: str | None = None) -> str:
        dataset = self.stack.env["DICOM_STORE"].rsplit("/dicomStores/", 1)[0]
        store_id = store_id or unique("cli-store")
        self.api("POST", f"v1/{dataset}/dicomStores", params={"dicomStoreId": store_id})
        return f"{dataset}/dicomStores/{store_id}"

    def import_now(self, uri: str) -> None:
        """Import straight through the emulator (test setup, not the CLI), waiting for the operation."""
        operation = self.api("POST", f"v1/{self.store}:import", json={"gcsSource": {"uri": uri}})
        deadline = time.monotonic() + 60
        while not operation.get("done"):
            assert time.monotonic() < deadline, f"import {operation['name']} not done"
            time.sleep(0.2)
            operation = self.api("GET", f"v1/{operation['name']}")
        assert "error" not in operation, operation

    def sop_uids(self) -> set[str]:
        """SOP Instance UIDs in the test's store, by QIDO."""
        found = self.api("GET", f"v1/{self.store}/dicomWeb/instances")
        return {item["00080018"]["Value"][0] for item in found}

    def stats(self) -> dict[str, int]:
        """Calls per method so far (``/emulator/stats``)."""
        return dict(self.api("GET", "emulator/stats"))

    def calls_since(self, before: dict[str, int]) -> dict[str, int]:
        after = self.stats()
        return {method: n - before.get(method, 0) for method, n in after.items() if n != before.get(method, 0)}

    # -- results ----------------------------------------------------------------------------
    def results(self, wanted: int, timeout: float = 30.0, **attributes: str) -> list[tuple[dict[str, Any], dict[str, str]]]:
        """Up to ``wanted`` result messages (data, attributes) whose attributes have these values.

        The results topic is shared by every test: others' messages are left out.
        """
        found: list[tuple[dict[str, Any], dict[str, str]]] = []
        deadline = time.monotonic() + timeout
        while len(found) < wanted and time.monotonic() < deadline:
            received = self.pubsub.pull(self.subscription, 10, wait=False, timeout=10)
            for item in received:
                message = item["message"]
                found_attributes = message.get("attributes", {})
                if all(found_attributes.get(key) == value for key, value in attributes.items()):
                    found.append((json.loads(base64.b64decode(message["data"])), found_attributes))
            self.pubsub.acknowledge(self.subscription, [item["ackId"] for item in received])
            if not received:
                time.sleep(0.2)
        return found


def files(instances: Iterable[tuple[InstanceUids, bytes]], folder: str) -> list[tuple[str, bytes]]:
    """Object names ``folder/STUDY/SERIES/SOP.dcm`` for sample instances."""
    return [(f"{folder}{uids.study}/{uids.series}/{uids.sop}.dcm", data) for uids, data in instances]
