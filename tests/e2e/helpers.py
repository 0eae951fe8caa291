"""What the end-to-end tests do to a running stack: upload, deliver events by hand, read results."""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Mapping

import requests

from localstack.observe import Result, ResultsReader


def storage(env: Mapping[str, str]):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    return gcs.Client(project=env["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials(),
                      client_options={"api_endpoint": env["STORAGE_EMULATOR_HOST"]})


def direct(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with Cloud Storage reached directly (fake-gcs-server), not through the fault proxy.

    For what stands outside the system under test: modalities uploading, and
    observers reading the state bucket while Cloud Storage faults are injected.
    """
    return {**env, "STORAGE_EMULATOR_HOST": env.get("FAKE_GCS_URL") or env["STORAGE_EMULATOR_HOST"]}


def unique_prefix(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}/"


def upload(env: Mapping[str, str], files: Iterable[tuple[str, bytes]], threads: int = 16) -> dict[str, str]:
    """Upload ``(name, data)`` pairs to the inbox; name -> generation."""
    bucket = storage(env).bucket(env["INBOX_BUCKET"])

    def put(item: tuple[str, bytes]) -> tuple[str, str]:
        blob = bucket.blob(item[0])
        blob.upload_from_string(item[1])
        return item[0], str(blob.generation)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return dict(pool.map(put, list(files)))


def storage_event(env: Mapping[str, str], name: str, generation: str, event_id: str | None = None) -> requests.Response:
    """Deliver a finalize event to the function by hand, exactly as Eventarc would."""
    bucket = env["INBOX_BUCKET"]
    headers = {"ce-specversion": "1.0", "ce-type": "google.cloud.storage.object.v1.finalized",
               "ce-source": f"//storage.googleapis.com/projects/_/buckets/{bucket}", "ce-subject": f"objects/{name}",
               "ce-id": event_id or uuid.uuid4().hex, "ce-time": "2026-11-25T10:00:00Z",
               "Content-Type": "application/json"}
    body = {"bucket": bucket, "name": name, "generation": generation, "size": "1", "contentType": "application/dicom"}
    return requests.post(env["FUNCTION_URL"], headers=headers, data=json.dumps(body), timeout=120)


def notification_event(env: Mapping[str, str], name: str, generation: str, event_type: str = "OBJECT_FINALIZE",
                       **fields: str) -> requests.Response:
    """Deliver a Cloud Storage Pub/Sub notification (push envelope) to the same function.

    ``event_type`` is its ``eventType`` attribute (``OBJECT_METADATA_UPDATE``...); ``fields``
    are more fields of the object resource it carries (``metageneration="2"``...).
    """
    bucket = env["INBOX_BUCKET"]
    resource = {"bucket": bucket, "name": name, "generation": generation, "size": "1", **fields}
    envelope = {"subscription": "projects/local-project/subscriptions/manual", "message": {
        "data": base64.b64encode(json.dumps(resource).encode()).decode(), "messageId": uuid.uuid4().hex,
        "publishTime": "2026-11-25T10:00:00Z",
        "attributes": {"eventType": event_type, "bucketId": bucket, "objectId": name,
                       "objectGeneration": generation, "payloadFormat": "JSON_API_V1"}}}
    return requests.post(env["FUNCTION_URL"], json=envelope, timeout=120)


_manifests: dict[str, list[dict]] = {}


def reported_objects(result: Result, env: Mapping[str, str] | None = None) -> list[dict]:
    """The objects (``uri``, ``generation``) a result covers.

    A batch too large to list (more than 100 objects) has ``objects: null`` and only
    its ``manifest``, the batch record in the state bucket: with ``env`` its members
    are read from there (once per manifest); without, such a result covers nothing.
    """
    if result.data.get("objects") is not None:
        return result.data["objects"]
    manifest = result.data.get("manifest") or ""
    if env is None or not manifest.startswith("gs://"):
        return []
    if manifest not in _manifests:
        bucket, _, path = manifest[len("gs://"):].partition("/")
        record = json.loads(storage(direct(env)).bucket(bucket).blob(path).download_as_bytes())
        _manifests[manifest] = [{"uri": f"gs://{m['bucket']}/{m['name']}", "generation": m["generation"]}
                                for m in record.get("members") or []]
    return _manifests[manifest]


def import_results_under(results: Iterable[Result], bucket: str, prefix: str,
                         env: Mapping[str, str] | None = None) -> list[Result]:
    """Import results that cover objects of ``gs://bucket/prefix`` (``env``: see :func:`reported_objects`)."""
    scope = f"gs://{bucket}/{prefix}"
    return [r for r in results if r.data["schema"] == "dicom-import-result/v1"
            and any(o["uri"].startswith(scope) for o in reported_objects(r, env))]


def covered_names(results: Iterable[Result], bucket: str, prefix: str,
                  env: Mapping[str, str] | None = None) -> Counter:
    """How many reported batches cover each object name under the prefix (one per distinct batch)."""
    seen: Counter = Counter()
    batches = set()
    for result in import_results_under(results, bucket, prefix, env):
        if result.data["batch"] in batches:
            continue
        batches.add(result.data["batch"])
        for item in reported_objects(result, env):
            seen[item["uri"][len(f"gs://{bucket}/"):]] += 1
    return seen


def wait_for_names(reader: ResultsReader, bucket: str, prefix: str, names: Iterable[str], timeout: float,
                   quiet: float = 0.0, env: Mapping[str, str] | None = None, must_cover: bool = True) -> list[Result]:
    """Results under ``prefix`` once every name (full object names) is covered, then ``quiet`` more seconds.

    Fails naming what is still unreported after ``timeout``, unless ``must_cover`` is False
    (the chaos suite, which counts what is missing among its own invariants).
    """
    wanted = set(names)
    reader.until(lambda got: wanted <= set(covered_names(got, bucket, prefix, env)), timeout, quiet=quiet)
    results = import_results_under(reader.received, bucket, prefix, env)
    if must_cover:
        missing = sorted(wanted - set(covered_names(results, bucket, prefix, env)))
        assert not missing, f"{len(missing)} of {len(wanted)} objects not reported within {timeout:g} s: {missing[:3]}"
    return results


def join_times(env: Mapping[str, str], rule: str, generations: Mapping[str, str]) -> list[float]:
    """When each object joined its batch (its claim's ``claimedAt``, the intake's clock), sorted."""
    from handlers.batch import layout
    from handlers.events import StorageObject

    state = storage(direct(env)).bucket(env["STATE_BUCKET"])
    times = []
    for name, generation in generations.items():
        oid = layout.object_id(StorageObject(env["INBOX_BUCKET"], name, generation, None, ""))
        times.append(json.loads(state.blob(layout.claim_path(rule, oid)).download_as_bytes())["claimedAt"])
    return sorted(times)
