"""The fault-injecting Cloud Storage proxy in front of the real fake-gcs-server, driven by google-cloud-storage."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest
import requests
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from localstack.services import Service, start_gcs_proxy

pytestmark = pytest.mark.stack

BUCKET = "proxy-test"


@pytest.fixture(scope="module")
def proxy(fake_gcs: Service, tmp_path_factory: pytest.TempPathFactory, stack_owner: tuple[int, int]) -> Iterator[Service]:
    service = start_gcs_proxy(tmp_path_factory.mktemp("gcs-proxy"), upstream=fake_gcs.url, owner=stack_owner)
    requests.post(f"{fake_gcs.url}/storage/v1/b", json={"name": BUCKET}, timeout=10)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def admin(proxy: Service) -> Iterator[str]:
    url = f"{proxy.url}/proxy"
    yield url
    requests.delete(f"{url}/faults", timeout=5).raise_for_status()
    requests.delete(f"{url}/outage", timeout=5).raise_for_status()
    requests.put(f"{url}/config", json={"writeIntervalSeconds": 1.0}, timeout=5).raise_for_status()


@pytest.fixture
def bucket(proxy: Service) -> storage.Bucket:
    client = storage.Client(project="local-project", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": proxy.url})
    return client.bucket(BUCKET)


NO_RETRY = None


def stats(admin: str) -> dict:
    return requests.get(f"{admin}/stats", timeout=5).json()


def name(label: str) -> str:
    return f"{label}/{uuid.uuid4().hex[:8]}.json"


def test_requests_pass_through_to_fake_gcs(bucket, admin, fake_gcs):
    path = name("through")
    blob = bucket.blob(path)
    blob.upload_from_string(b'{"a": 1}', if_generation_match=0)
    assert bucket.blob(path).download_as_bytes() == b'{"a": 1}'
    assert [b.name for b in bucket.client.list_blobs(BUCKET, prefix=path)] == [path]
    direct = requests.get(f"{fake_gcs.url}/storage/v1/b/{BUCKET}/o/{requests.utils.quote(path, safe='')}", timeout=5)
    assert direct.json()["generation"] == str(blob.generation), "the object is in fake-gcs-server itself"
    counted = stats(admin)["requests"]
    assert counted["objects.insert"] >= 1 and counted["objects.get"] >= 1 and counted["objects.list"] >= 1


def test_a_second_write_of_one_name_within_a_second_is_refused_with_429(bucket, admin):
    path = name("limit")
    first = bucket.blob(path)
    first.upload_from_string(b"1", if_generation_match=0, retry=NO_RETRY)
    with pytest.raises(exceptions.TooManyRequests, match="rate limit for object mutation"):
        bucket.blob(path).upload_from_string(b"2", if_generation_match=first.generation, retry=NO_RETRY)
    other = bucket.blob(name("limit"))
    other.upload_from_string(b"x", retry=NO_RETRY)  # another name: not limited
    with pytest.raises(exceptions.TooManyRequests):
        other.delete(retry=NO_RETRY)  # a delete is a mutation too
    time.sleep(1.05)
    second = bucket.blob(path)
    second.upload_from_string(b"2", if_generation_match=first.generation, retry=NO_RETRY)
    assert stats(admin)["rateLimited"].get(f"{BUCKET}/limit/", 0) >= 2


def test_a_refused_write_does_not_count_against_the_limit(bucket, admin):
    path = name("refused")
    first = bucket.blob(path)
    first.upload_from_string(b"1", if_generation_match=0, retry=NO_RETRY)
    time.sleep(1.05)
    with pytest.raises(exceptions.PreconditionFailed):  # forwarded, refused by fake-gcs-server: no write happened
        bucket.blob(path).upload_from_string(b"2", if_generation_match=0, retry=NO_RETRY)
    bucket.blob(path).upload_from_string(b"3", if_generation_match=first.generation, retry=NO_RETRY)


def test_the_clients_own_retries_ride_out_the_write_limit(bucket, admin):
    path = name("retried")
    first = bucket.blob(path)
    first.upload_from_string(b"1", if_generation_match=0)
    started = time.monotonic()
    bucket.blob(path).upload_from_string(b"2", if_generation_match=first.generation)  # default retry policy
    assert bucket.blob(path).download_as_bytes() == b"2"
    assert time.monotonic() - started < 10


def test_the_limit_can_be_turned_off(bucket, admin):
    requests.put(f"{admin}/config", json={"writeIntervalSeconds": 0}, timeout=5).raise_for_status()
    path = name("unlimited")
    for data in (b"1", b"2", b"3"):
        bucket.blob(path).upload_from_string(data, retry=NO_RETRY)


def test_injected_errors_by_method_are_answered_by_the_proxy_and_never_forwarded(bucket, admin):
    path = name("faults")
    bucket.blob(path).upload_from_string(b"kept", retry=NO_RETRY)
    spec = {"seed": 7, "methods": {"objects.get": {"rate503": 1.0}, "objects.insert": {"rate429": 1.0}}}
    assert requests.put(f"{admin}/faults", json=spec, timeout=5).status_code == 200
    with pytest.raises(exceptions.ServiceUnavailable):
        bucket.blob(path).download_as_bytes(retry=NO_RETRY)
    with pytest.raises(exceptions.TooManyRequests):
        bucket.blob(path).upload_from_string(b"lost", retry=NO_RETRY)
    assert [b.name for b in bucket.client.list_blobs(BUCKET, prefix=path)] == [path], "other methods unaffected"
    requests.delete(f"{admin}/faults", timeout=5).raise_for_status()
    assert bucket.blob(path).download_as_bytes() == b"kept", "the refused upload never reached fake-gcs-server"
    injected = stats(admin)["injectedErrors"]
    assert injected["objects.get"]["503"] >= 1 and injected["objects.insert"]["429"] >= 1


def test_latency_is_added_per_method(bucket, admin):
    path = name("slow")
    bucket.blob(path).upload_from_string(b"x", retry=NO_RETRY)
    requests.put(f"{admin}/faults", json={"methods": {"objects.get": {"latencySeconds": 0.4}}}, timeout=5)
    started = time.monotonic()
    bucket.blob(path).download_as_bytes()
    assert time.monotonic() - started >= 0.4


def test_an_outage_answers_everything_503_until_it_ends(bucket, admin):
    path = name("outage")
    assert requests.put(f"{admin}/outage", json={"seconds": 1.5}, timeout=5).json()["remainingSeconds"] == 1.5
    with pytest.raises(exceptions.ServiceUnavailable):
        list(bucket.client.list_blobs(BUCKET, prefix=path, retry=NO_RETRY))
    started = time.monotonic()
    bucket.blob(path).upload_from_string(b"after", retry=DEFAULT_RETRY.with_delay(initial=0.2, maximum=0.5))
    assert time.monotonic() - started >= 1.0, "the client's retries waited for the end of the outage"
    assert stats(admin)["outageRefused"] >= 2


@pytest.mark.parametrize("spec, words", [
    ({"methods": {"dicomStores.import": {"failOperation": True}}}, "failOperation"),
    ({"methods": {"*": {"rate429": 0.7, "rate503": 0.7}}}, "must not exceed 1"),
    ({"methods": {"objects.get": {"rate5o3": 0.1}}}, "unknown field"),
])
def test_a_bad_fault_configuration_is_refused_naming_the_field(admin, spec, words):
    response = requests.put(f"{admin}/faults", json=spec, timeout=5)
    assert response.status_code == 400 and words in response.json()["error"]


def test_admin_calls_are_never_faulted(admin):
    requests.put(f"{admin}/outage", json={"seconds": 5}, timeout=5).raise_for_status()
    assert requests.get(f"{admin}/health", timeout=5).status_code == 200


def test_a_conditional_write_whose_precondition_fails_gets_412_not_429(bucket, admin):
    path = name("precondition")
    first = bucket.blob(path)
    first.upload_from_string(b"1", if_generation_match=0, retry=NO_RETRY)
    with pytest.raises(exceptions.PreconditionFailed):  # a concurrent creator lost the race: told so at once
        bucket.blob(path).upload_from_string(b"2", if_generation_match=0, retry=NO_RETRY)
    with pytest.raises(exceptions.TooManyRequests):  # the same write with the right generation: rate limited
        bucket.blob(path).upload_from_string(b"2", if_generation_match=first.generation, retry=NO_RETRY)


def test_a_rewrite_onto_an_existing_object_with_if_generation_match_0_gets_412_and_overwrites_nothing(bucket, admin):
    """fake-gcs-server ignores the destination's precondition of a rewrite; Cloud Storage, and so the proxy, do not."""
    source, target = bucket.blob(name("rewrite-source")), bucket.blob(name("rewrite-target"))
    source.upload_from_string(b"new", retry=NO_RETRY)
    target.upload_from_string(b"kept", retry=NO_RETRY)
    time.sleep(1.05)
    with pytest.raises(exceptions.PreconditionFailed, match="pre-conditions you specified did not hold"):
        bucket.blob(target.name).rewrite(source, if_generation_match=0, retry=NO_RETRY)
    assert bucket.blob(target.name).download_as_bytes() == b"kept"
    fresh = bucket.blob(name("rewrite-fresh"))
    fresh.rewrite(source, if_generation_match=0, retry=NO_RETRY)
    assert bucket.blob(fresh.name).download_as_bytes() == b"new", "a rewrite to a new name goes through"


def test_every_mutation_s_failed_precondition_is_a_412_and_changes_nothing(bucket, admin):
    """fake-gcs-server checks ifGenerationMatch on multipart uploads only: a delete, a patch, a media upload and a
    resumable upload (its session's precondition) with a stale one went through; Cloud Storage, and the proxy, refuse."""
    blob = bucket.blob(name("preconditions"))
    blob.upload_from_string(b"kept", retry=NO_RETRY)
    stale = blob.generation + 1
    with pytest.raises(exceptions.PreconditionFailed):
        bucket.blob(blob.name).delete(if_generation_match=stale, retry=NO_RETRY)
    patched = bucket.blob(blob.name)
    patched.metadata = {"tag": "x"}
    with pytest.raises(exceptions.PreconditionFailed):
        patched.patch(if_generation_match=stale, retry=NO_RETRY)
    media = requests.post(f"{admin.rsplit('/proxy', 1)[0]}/upload/storage/v1/b/{bucket.name}/o",
                          params={"uploadType": "media", "name": blob.name, "ifGenerationMatch": "0"},
                          data=b"replaced", timeout=10)
    assert media.status_code == 412, media.text
    resumable = bucket.blob(blob.name, chunk_size=256 * 1024)
    with pytest.raises(exceptions.PreconditionFailed):
        resumable.upload_from_string(b"r" * (300 * 1024), if_generation_match=0, retry=NO_RETRY)
    now = bucket.get_blob(blob.name)
    assert now.download_as_bytes() == b"kept" and now.generation == blob.generation and not now.metadata
    time.sleep(1.05)
    bucket.blob(blob.name).delete(if_generation_match=blob.generation, retry=NO_RETRY)
    assert bucket.get_blob(blob.name) is None, "the right generation still deletes"


@pytest.mark.parametrize("interval", [1.0, 0.0], ids=["limit on", "limit off"])
def test_concurrent_replaces_conditional_on_one_generation_one_wins_the_others_get_412(bucket, admin, interval):
    """A compare-and-swap race: the precondition check, the limit and the write of one name are one step, so the
    losers are told 412 (not 429, and with the limit off none of them overwrites the winner: fake-gcs-server does not
    check a media upload's ifGenerationMatch)."""
    requests.put(f"{admin}/config", json={"writeIntervalSeconds": interval}, timeout=5).raise_for_status()
    upload = f"{admin.rsplit('/proxy', 1)[0]}/upload/storage/v1/b/{bucket.name}/o"
    for trial in range(3):
        blob = bucket.blob(name("cas"))
        blob.upload_from_string(b"0", if_generation_match=0, retry=NO_RETRY)
        time.sleep(interval + 0.05)
        start = threading.Barrier(8)

        def replace(writer: int) -> int:
            start.wait()
            return requests.post(upload, params={"uploadType": "media", "name": blob.name,
                                                 "ifGenerationMatch": str(blob.generation)},
                                 data=str(writer).encode(), timeout=30).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = sorted(pool.map(replace, range(8)))
        assert statuses == [200] + [412] * 7, f"trial {trial}: {statuses}"
