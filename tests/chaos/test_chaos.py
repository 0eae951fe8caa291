"""The fault-injection suite of issues 5 and 10: nine scenarios, one after another, on one local stack.

Each scenario drops a fresh set of objects (valid DICOM and a few invalid
``.dcm`` files) under its own prefix, does its damage while the batches go
through, and ends with :meth:`tests.chaos.harness.Run.finish`, which checks the
invariants and records the scenario's line for the end-of-session summary.
``CHAOS_SCALE=long`` (``make chaos``) runs the same with hundreds of objects,
more kills and longer outages. See docs/chaos.md.
"""

from __future__ import annotations

import base64
import io
import json
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pydicom
import pytest
import requests

from localstack import samples
from localstack.pubsub import PubSubRest
from tests.chaos.conftest import MAX_WAIT
from tests.chaos.harness import (Counters, Drop, Run, StateWatch, invalid_dicom, make_drop, sealed_record,
                                 upload_in_waves)
from tests.e2e.helpers import (direct, import_results_under, notification_event, storage, storage_event, unique_prefix,
                               upload)
from tests.message_schemas import validate

pytestmark = [pytest.mark.chaos, pytest.mark.stack, pytest.mark.slow]

FAULT_METHODS = ("dicomStores.import", "operations.get")
FAULT_RATE = 0.3  # half 429, half 503


def faults_url(stack) -> str:
    return f"{stack.env['HEALTHCARE_EMULATOR_HOST'].rstrip('/')}/emulator/faults"


def seed_with_early_fault(rng: random.Random, rate: float) -> int:
    """A random seed whose first draw is a fault, so even a short run meets at least one."""
    while True:
        seed = rng.randrange(2**31)
        if random.Random(seed).random() < rate:
            return seed


def deliver_until_acked(send: Callable[[], requests.Response], timeout: float = 90.0) -> int:
    """Send an event as Eventarc would: again, with backoff, until a 2xx; return the retries needed."""
    deadline, delay, retries = time.monotonic() + timeout, 0.5, 0
    while True:
        try:
            status = send().status_code
        except requests.RequestException as exc:
            status, error = None, exc
        else:
            error = None
        if status is not None and 200 <= status < 300:
            return retries
        if time.monotonic() + delay > deadline:
            raise AssertionError(f"event not acknowledged after {retries + 1} attempts (last: {status or error})")
        retries += 1
        time.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, 5.0)


# 1 -------------------------------------------------------------------------------------------------
def test_healthcare_api_answers_30_percent_of_calls_with_429_or_503(stack, scale, report):
    run = Run("api-429/503", stack, scale, report)
    rng = random.Random()
    drop = make_drop("faults", scale.objects, scale.invalid_every, rng)
    seed = seed_with_early_fault(rng, FAULT_RATE / 2)
    rates = {"rate429": FAULT_RATE / 2, "rate503": FAULT_RATE / 2}
    spec = {"seed": seed, "methods": {method: rates for method in FAULT_METHODS}}
    requests.put(faults_url(stack), json=spec, timeout=10).raise_for_status()
    try:
        upload_in_waves(stack.env, drop.files, scale.waves, StateWatch(stack.env))
        run.results_for(drop)
    finally:
        requests.delete(faults_url(stack), timeout=10).raise_for_status()
    run.note(f"seed {seed}")
    figures = run.finish(drop)
    assert figures.injected > 0, "the faults never fired: the scenario proved nothing"


# 2 -------------------------------------------------------------------------------------------------
def test_every_event_delivered_twice_and_shuffled(stack, scale, report):
    run = Run("events-twice", stack, scale, report)
    env = stack.env
    rng = random.Random()
    drop = make_drop("twice", scale.objects, scale.invalid_every, rng)
    senders = (lambda name, gen: storage_event(env, name, gen), lambda name, gen: notification_event(env, name, gen))
    retries: list[Future] = []
    bucket = env["INBOX_BUCKET"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        # Half the objects: a hand-made event right after the upload, racing the bridge's own.
        def upload_and_race(item: tuple[str, bytes]) -> tuple[str, str]:
            name, generation = next(iter(upload(env, [item], threads=1).items()))
            if rng.random() < 0.5:
                send = rng.choice(senders)
                retries.append(pool.submit(deliver_until_acked, lambda: send(name, generation)))
            return name, generation

        def upload_part(part: list[tuple[str, bytes]]) -> dict[str, str]:
            with ThreadPoolExecutor(max_workers=16) as uploaders:
                return dict(uploaders.map(upload_and_race, part))

        generations = upload_in_waves(env, drop.files, scale.waves, StateWatch(env), each=upload_part)
        # Every object: one more, in random order, concurrently.
        events = [(name, generation, rng.choice(senders)) for name, generation in generations.items()]
        rng.shuffle(events)
        for name, generation, send in events:
            retries.append(pool.submit(deliver_until_acked, lambda n=name, g=generation, s=send: s(n, g)))
        hand_retries = sum(future.result() for future in retries)
    run.note(f"{len(retries)} extra events, {hand_retries} hand retries")
    run.finish(drop)

    # Late duplicates, long after every batch is done: still no import, no message.
    before = Counters.read(stack)
    received = len(import_results_under(run.reader.received, bucket, drop.prefix, env))
    late = [(name, generation, rng.choice(senders)) for name, generation in generations.items()]
    rng.shuffle(late)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda event: deliver_until_acked(lambda: event[2](event[0], event[1])), late))
    run.reader.until(lambda _: False, timeout=MAX_WAIT + 3)
    assert Counters.read(stack).import_requests == before.import_requests, "a late duplicate caused an import"
    assert len(import_results_under(run.reader.received, bucket, drop.prefix, env)) == received, \
        "a late duplicate caused a result message"


# 3 -------------------------------------------------------------------------------------------------
def test_function_processes_killed_mid_batch_then_restarted(stack, scale, report):
    run = Run("kill-restart", stack, scale, report)
    env = stack.env
    rng = random.Random()
    drop = make_drop("kill", scale.objects, scale.invalid_every, rng)
    rounds = scale.kill_rounds
    waves = [drop.files[i::rounds + 1] for i in range(rounds + 1)]
    watch = StateWatch(env)
    function, followup = stack.functions["function"], stack.functions["followup"]
    targets = [(function, followup), (function,), (followup,)]
    kills = {"function": 0, "followup": 0}
    seen: set[str] = set()

    with ThreadPoolExecutor(max_workers=1) as uploader:
        pending = uploader.submit(upload, env, waves[0], 8)
        for round_ in range(rounds):
            # Even rounds: while a batch's window is open (objects joined, driver waiting);
            # odd rounds: right after a batch is sealed (its driver importing or following).
            if round_ % 2 == 0:
                moment = watch.wait_for(StateWatch.open_batch_with_members, timeout=30)
            else:
                moment = watch.wait_for(lambda w: sealed_record(w, seen), timeout=30)
                seen.add(moment or "")
            if not moment:
                uploaded = pending.exception() if pending.done() else "still uploading"
                raise AssertionError(f"round {round_}: no batch reached the moment to kill in 30 s; upload: "
                                     f"{uploaded or 'done'}; {watch.describe()}; bridge: {stack.bridge_status()}")
            victims = targets[round_ % len(targets)]
            felt = Counters.read(stack).bridge_failed
            pids = {service.name: service.pid for service in victims}
            for service in victims:
                service.kill()
                kills[service.name] += 1
            pending.result()
            pending = uploader.submit(upload, env, waves[round_ + 1], 8)  # events for a dead intake
            # Down until the bridge has felt it (a delivery refused or cut), then a little longer.
            down = time.monotonic()
            while Counters.read(stack).bridge_failed == felt and time.monotonic() - down < 15:
                time.sleep(0.1)
            time.sleep(rng.uniform(0.2, 2.0))
            for service in victims:
                service.start()
                assert service.pid != pids[service.name], f"{service.name} was not restarted"
        pending.result()
    run.note(f"killed function x{kills['function']}, followup x{kills['followup']}")
    figures = run.finish(drop)
    assert figures.bridge_retries > 0, "no delivery ever failed: the kills hit nothing"


# 4 -------------------------------------------------------------------------------------------------
def test_pubsub_emulator_stopped_while_results_are_published(stack, scale, report):
    run = Run("pubsub-outage", stack, scale, report)
    env = stack.env
    rng = random.Random()
    drop = make_drop("outage", scale.objects, scale.invalid_every, rng)
    waves = [drop.files[i::scale.outages] for i in range(scale.outages)]
    watch = StateWatch(env)
    caught = 0
    for outage, wave in enumerate(waves):
        # Upload while Pub/Sub is up: fake-gcs-server publishes its notifications to the same
        # emulator and drops them when that fails (real Cloud Storage does not); not tested here.
        seen = set(watch.new_records())
        upload(env, wave)
        # Stop Pub/Sub as soon as one of this wave's batches is sealed: its import is next, then its result.
        sealed = watch.wait_for(lambda w: sealed_record(w, seen), timeout=60)
        assert sealed, f"outage {outage + 1}: no batch was sealed in 60 s"
        stack.pubsub.pause()
        try:
            ends = time.monotonic() + scale.outage_seconds
            publishing: set[str] = set()
            while time.monotonic() < ends:
                publishing |= {path for path, state in watch.new_records().items() if state == "publishing"}
                time.sleep(0.2)
        finally:
            stack.pubsub.resume()
        caught += len(publishing)
        assert publishing, f"outage {outage + 1}: no result was being published while Pub/Sub was stopped"
    run.note(f"{scale.outages} x {scale.outage_seconds:g} s outage, {caught} publications caught in it")
    run.finish(drop)


# 5 -------------------------------------------------------------------------------------------------
SPECIAL_NAMES = ("with space {i}.dcm", "ünï©ødé {i}.dcm", "hash#{i}.dcm", "star*{i}.dcm", "what?{i}.dcm",
                 "[bracket]{i}.dcm", "open[{i}.dcm")


def long_name(prefix: str, index: int, char: str) -> str:
    """A name of exactly 1,024 bytes in UTF-8 (the Cloud Storage maximum), made of ``char``."""
    stem = f"{prefix}long{index}-"
    room = 1024 - len(stem.encode()) - len(".dcm")
    width = len(char.encode())
    filler = char * (room // width) + "x" * (room % width)
    name = stem + filler + ".dcm"
    assert len(name.encode()) == 1024
    return name


def bad_inputs_drop(scale, rng: random.Random) -> Drop:
    drop = Drop(unique_prefix("chaos-bad"))
    count = max(len(SPECIAL_NAMES) + 2, scale.objects)
    series = samples.make_series(count)
    for index, (uids, data) in enumerate(series):
        kind = index % (len(SPECIAL_NAMES) + 2)
        if kind < len(SPECIAL_NAMES):
            name = drop.prefix + SPECIAL_NAMES[kind].format(i=index)
        else:
            name = long_name(drop.prefix, index, "x" if kind == len(SPECIAL_NAMES) else "é")
        drop.add_valid(name, uids.sop, data)
    for index in range(max(4, scale.objects // scale.invalid_every)):
        label = ("empty", "text", "cut off", "random")[index % 4]
        drop.add_invalid(f"{drop.prefix}bad/{label} {index}.dcm", invalid_dicom(index, series[0][1]))
    drop.add_unmatched(f"{drop.prefix}dir/", b"")
    drop.add_unmatched(f"{drop.prefix}nested/dir/", b"")
    drop.add_unmatched(f"{drop.prefix}notes.txt", b"not an image")
    rng.shuffle(drop.files)
    return drop


def cloud_event_headers(env, bucket: str, name: str, event_type: str) -> dict[str, str]:
    return {"ce-specversion": "1.0", "ce-type": event_type, "ce-id": f"chaos-{uuid.uuid4().hex}",
            "ce-source": f"//storage.googleapis.com/projects/_/buckets/{bucket}", "ce-subject": f"objects/{name}",
            "ce-time": "2026-11-25T10:00:00Z", "Content-Type": "application/json"}


def test_bad_inputs_are_acknowledged_or_refused_never_retried_forever(stack, scale, report):
    run = Run("bad-inputs", stack, scale, report)
    env = stack.env
    rng = random.Random()
    drop = bad_inputs_drop(scale, rng)
    inbox, url = env["INBOX_BUCKET"], env["FUNCTION_URL"]
    upload(env, drop.files)

    # Well-formed CloudEvents that no retry can make useful: 2xx, and the reason is logged.
    ghost = f"{drop.prefix}never-uploaded.dcm"
    finalized = "google.cloud.storage.object.v1.finalized"
    resource = {"bucket": inbox, "name": ghost, "generation": "1700000000000000"}
    acknowledged = {  # label -> (headers, body)
        "deleted event": (cloud_event_headers(env, inbox, ghost, "google.cloud.storage.object.v1.deleted"), resource),
        "archived event": (cloud_event_headers(env, inbox, ghost, "google.cloud.storage.object.v1.archived"), resource),
        "metadata event": (cloud_event_headers(env, inbox, ghost, "google.cloud.storage.object.v1.metadataUpdated"),
                           resource),
        "unknown type": (cloud_event_headers(env, inbox, ghost, "com.example.something"), resource),
        "no generation": (cloud_event_headers(env, inbox, ghost, finalized), {"bucket": inbox, "name": ghost}),
        "1,025-byte name": (cloud_event_headers(env, inbox, "n", finalized),
                            {**resource, "name": long_name(drop.prefix, 0, "x")[:-len(".dcm")] + "y.dcm"}),
        "truncated body": (cloud_event_headers(env, inbox, ghost, finalized), json.dumps(resource)[:25]),
        "garbage body": (cloud_event_headers(env, inbox, ghost, finalized), b"\x00\xff\xfe garbage"),
        "empty body": (cloud_event_headers(env, inbox, ghost, finalized), b""),
        "list body": (cloud_event_headers(env, inbox, ghost, finalized), [resource]),
    }
    unknown_bucket = {"bucket": "somebody-elses-bucket", "name": f"{drop.prefix}x.dcm", "generation": "1"}
    not_imported = {  # label -> (headers, body, object uri the "object not imported" line names)
        "unknown bucket": (cloud_event_headers(env, unknown_bucket["bucket"], unknown_bucket["name"], finalized),
                           unknown_bucket, f"gs://{unknown_bucket['bucket']}/{unknown_bucket['name']}"),
    }
    delete_notification = {"subscription": "projects/p/subscriptions/s", "message": {
        "data": base64.b64encode(json.dumps(resource).encode()).decode(), "messageId": f"chaos-{uuid.uuid4().hex}",
        "publishTime": "2026-11-25T10:00:00Z", "attributes": {"eventType": "OBJECT_DELETE", "bucketId": inbox,
                                                             "objectId": ghost, "objectGeneration": "1"}}}
    answers: dict[str, int] = {}
    for label, (headers, body) in acknowledged.items():
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        answers[label] = requests.post(url, headers=headers, data=data, timeout=60).status_code
    for label, (headers, body, _) in not_imported.items():
        answers[label] = requests.post(url, headers=headers, data=json.dumps(body), timeout=60).status_code
    answers["OBJECT_DELETE notification"] = requests.post(url, json=delete_notification, timeout=60).status_code
    # A generation that no longer exists is admitted like any other; the driver skips it when it copies.
    answers["generation gone"] = requests.post(url, headers=cloud_event_headers(env, inbox, ghost, finalized),
                                               data=json.dumps(resource), timeout=60).status_code

    # Bodies that are no CloudEvent at all: functions-framework refuses them with a 4xx before our
    # code runs. Never a 5xx (Eventarc and the bridge would retry it) and never a traceback.
    refused = {
        "garbage, no type": ({}, b"\x00\xff garbage"),
        "text/plain": ({"Content-Type": "text/plain"}, b"hello"),
        "form": ({"Content-Type": "application/x-www-form-urlencoded"}, b"a=b"),
        "truncated JSON": ({"Content-Type": "application/json"}, json.dumps({"bucket": inbox, "name": "x"})[:17]),
        "truncated structured": ({"Content-Type": "application/cloudevents+json"},
                                 json.dumps({"specversion": "1.0", "type": finalized, "id": "1"})[:30]),
        "JSON list": ({"Content-Type": "application/json"}, b"[1, 2]"),
        "JSON string": ({"Content-Type": "application/json"}, b'"event"'),
        "JSON null": ({"Content-Type": "application/json"}, b"null"),
        "structured list": ({"Content-Type": "application/cloudevents+json"}, b"[{}]"),
        "invalid UTF-8 JSON": ({"Content-Type": "application/json"}, b'{"name": "\xff"}'),
        "deeply nested JSON": ({"Content-Type": "application/json"}, b"[" * 100_000),
        "CloudEvent without id": ({k: v for k, v in cloud_event_headers(env, inbox, ghost, finalized).items()
                                   if k != "ce-id"}, json.dumps(resource)),
        "unknown specversion": ({**cloud_event_headers(env, inbox, ghost, finalized), "ce-specversion": "0.1"},
                                json.dumps(resource)),
        "push envelope, bad data": ({"Content-Type": "application/json"},
                                    json.dumps({"message": {"data": "!!!"}, "subscription": "s"})),
    }
    refusals = {label: requests.post(url, headers=headers, data=body, timeout=60).status_code
                for label, (headers, body) in refused.items()}

    # Malformed notifications on the notification topic: the bridge must acknowledge them, not retry forever.
    pubsub = PubSubRest(env["PUBSUB_EMULATOR_HOST"])
    ids = {attributes_label: pubsub.publish(env["NOTIFICATIONS_TOPIC"], data, attributes)
           for attributes_label, data, attributes in (
               ("garbage data", b"\xff\x00 garbage", {"eventType": "OBJECT_FINALIZE", "bucketId": inbox,
                                                       "objectId": f"{drop.prefix}ghost1.dcm"}),
               ("garbage data, no ids", b"garbage", {"eventType": "OBJECT_FINALIZE"}),
               ("JSON list, no ids", b"[1]", {"eventType": "OBJECT_FINALIZE"}),
               ("numbers for names, no ids", b'{"bucket": 1, "name": 2}', {"eventType": "OBJECT_FINALIZE"}),
               ("no attributes", json.dumps(resource).encode(), {}),
               ("OBJECT_DELETE", json.dumps(resource).encode(), {"eventType": "OBJECT_DELETE", "bucketId": inbox,
                                                                 "objectId": ghost}),
               ("other bucket", json.dumps(unknown_bucket).encode(), {"eventType": "OBJECT_FINALIZE",
                                                                       "bucketId": unknown_bucket["bucket"],
                                                                       "objectId": unknown_bucket["name"]}),
           )}
    run.note(f"{len(answers)} unusable events, {len(refused)} non-CloudEvents, {len(ids)} bad notifications")
    run.finish(drop, checks=lambda: bad_input_problems(run, drop, answers, refusals, ids, acknowledged, not_imported,
                                                       delete_notification))


def bad_input_problems(run, drop, answers, refusals, ids, acknowledged, not_imported, delete_notification) -> list[str]:
    """Once every object is reported (the bridge has worked through the drop): what went wrong."""
    inbox = run.env["INBOX_BUCKET"]
    bridge_outcome = wait_for_bridge(run.stack, set(ids.values()), timeout=60)
    problems = []
    not_2xx = {label: status for label, status in answers.items() if not 200 <= status < 300}
    if not_2xx:
        problems.append(f"unusable events must be acknowledged (2xx): {not_2xx}")
    wrong = {label: status for label, status in refusals.items() if not 400 <= status < 500}
    if wrong:
        problems.append(f"bodies that are no CloudEvent must get a 4xx, never a 5xx: {wrong}")
    retried = {label: bridge_outcome.get(message_id) for label, message_id in ids.items()
               if bridge_outcome.get(message_id) not in ("delivered", "skipped")}
    if retried:
        problems.append(f"the bridge did not simply acknowledge these notifications: {retried}")
    entries = run.logs.entries("function")
    reasons = {entry.get("eventId"): entry.get("reason") for entry in entries
               if entry.get("message") == "event acknowledged without action"}
    unexplained = [label for label, (headers, _) in acknowledged.items() if not reasons.get(headers["ce-id"])]
    if not reasons.get(delete_notification["message"]["messageId"]):
        unexplained.append("OBJECT_DELETE notification")
    skipped = {entry.get("object"): entry.get("reason") for entry in entries
               if entry.get("message") == "object not imported"}
    unexplained += [label for label, (_, _, uri) in not_imported.items() if not skipped.get(uri)]
    unexplained += [name for name in drop.unmatched if not skipped.get(f"gs://{inbox}/{name}")]
    if unexplained:
        problems.append(f"acknowledged without a logged reason: {unexplained}")
    if not wait_for_skip_logged(run, timeout=60):
        problems.append("the generation that no longer exists was never reported as skipped by a driver")
    return problems


def wait_for_skip_logged(run, timeout: float) -> bool:
    """True once a driver logged that it skipped a generation deleted or overwritten before its import."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(entry.get("message") == "objects deleted or overwritten before import: skipped"
               for entry in run.logs.entries("followup")):
            return True
        time.sleep(0.5)
    return False


def wait_for_bridge(stack, message_ids: set[str], timeout: float) -> dict[str, str]:
    """What the bridge did with each message of the function route.

    ``delivered`` (2xx at the first attempt) or ``skipped`` (acknowledged without a
    request); otherwise the errors of its failed attempts (it retries those forever).
    """
    deadline = time.monotonic() + timeout
    while True:
        done: dict[str, str] = {}
        failures: dict[str, list[str]] = {}
        with open(stack.bridge.log_path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                message_id = entry.get("messageId")
                if entry.get("route") != "function" or message_id not in message_ids:
                    continue
                message = str(entry.get("message", ""))
                if message == "delivered":
                    done[message_id] = "delivered"
                elif message.startswith("event skipped"):
                    done[message_id] = "skipped"
                else:
                    failures.setdefault(message_id, []).append(f"{message}: {entry.get('error')}")
        outcome = {m: done[m] for m in done if m not in failures}
        outcome.update({m: f"{len(errors)} failed attempts, e.g. {errors[-1]}" for m, errors in failures.items()})
        if set(outcome) == message_ids and not failures or time.monotonic() > deadline:
            return outcome
        time.sleep(0.5)


# 6 -------------------------------------------------------------------------------------------------
GCS_FAULT_RATE = 0.1  # half 429, half 503


def proxy_url(stack) -> str:
    return f"{stack.env['STORAGE_EMULATOR_HOST']}/proxy"


def test_cloud_storage_answers_10_percent_of_calls_with_429_or_503(stack, scale, report):
    run = Run("gcs-429/503", stack, scale, report)
    rng = random.Random()
    drop = make_drop("gcs-faults", scale.objects, scale.invalid_every, rng)
    seed = seed_with_early_fault(rng, GCS_FAULT_RATE / 2)
    spec = {"seed": seed, "methods": {"*": {"rate429": GCS_FAULT_RATE / 2, "rate503": GCS_FAULT_RATE / 2}}}
    requests.put(f"{proxy_url(stack)}/faults", json=spec, timeout=10).raise_for_status()
    try:
        # The modality uploads around the faults (it is not ours to test); every call of ours meets them.
        upload_in_waves(direct(stack.env), drop.files, scale.waves, StateWatch(stack.env))
        run.results_for(drop)
    finally:
        requests.delete(f"{proxy_url(stack)}/faults", timeout=10).raise_for_status()
    injected = (Counters.read(stack) - run.before).gcs_injected
    run.note(f"seed {seed}, {injected} Cloud Storage calls refused")
    run.finish(drop)
    assert injected > 0, "no Cloud Storage fault fired: the scenario proved nothing"


# 7 -------------------------------------------------------------------------------------------------
def test_cloud_storage_outage_in_the_middle_of_a_drop(stack, scale, report):
    run = Run("gcs-outage", stack, scale, report)
    env = stack.env
    rng = random.Random()
    drop = make_drop("gcs-outage", scale.objects, scale.invalid_every, rng)
    waves = [drop.files[i::scale.gcs_outages + 1] for i in range(scale.gcs_outages + 1)]
    watch = StateWatch(env)
    upload(direct(env), waves[0])
    for outage, wave in enumerate(waves[1:]):
        # Mid-drop: a batch of the previous wave is open with members (its driver listing) or just sealed.
        moment = watch.wait_for(lambda w: w.open_batch_with_members() or sealed_record(w), timeout=60)
        assert moment, f"outage {outage + 1}: no batch open or sealed in 60 s; {watch.describe()}"
        requests.put(f"{proxy_url(stack)}/outage", json={"seconds": scale.gcs_outage_seconds},
                     timeout=10).raise_for_status()
        upload(direct(env), wave)  # events arrive while Cloud Storage is down for the function
        time.sleep(scale.gcs_outage_seconds + 1)
    refused = (Counters.read(stack) - run.before).gcs_outage_refused
    run.note(f"{scale.gcs_outages} x {scale.gcs_outage_seconds:g} s outage, {refused} calls refused in it")
    run.finish(drop)
    assert refused > 0, "no call met the outage: the scenario proved nothing"


# 8 -------------------------------------------------------------------------------------------------
LOST_FRACTION = 0.2
CHAOS_CONFIG = Path(__file__).with_name("config.yaml")
REPO = Path(__file__).resolve().parents[2]


def test_a_fifth_of_the_events_lost_for_good_then_one_reconcile_run(stack, scale, report, tmp_path):
    run = Run("lost-events", stack, scale, report)
    env = stack.env
    rng = random.Random()
    drop = make_drop("lost", scale.objects, scale.invalid_every, rng)
    seed = seed_with_early_fault(rng, LOST_FRACTION)
    before = Counters.read(stack)
    processed = lambda: sum(route["delivered"] + route["dropped"] + route["skipped"]  # noqa: E731
                            for name, route in stack.bridge_status()["routes"].items() if name == "function")
    start = processed()
    requests.put(f"{env['BRIDGE_URL']}/events", json={"drop": LOST_FRACTION, "seed": seed}, timeout=10).raise_for_status()
    try:
        upload_in_waves(env, drop.files, scale.waves, StateWatch(env))
        deadline = time.monotonic() + scale.timeout
        while processed() - start < len(drop.files):  # every event delivered or lost
            assert time.monotonic() < deadline, stack.bridge_status()["routes"]["function"]
            time.sleep(0.2)
    finally:
        requests.put(f"{env['BRIDGE_URL']}/events", json={"drop": 0}, timeout=10).raise_for_status()
    lost = (Counters.read(stack) - before).dropped_events
    assert lost > 0, "no event was lost: the scenario proved nothing"

    env_file = tmp_path / "stack.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    swept = subprocess.run([sys.executable, "-m", "handlers", "reconcile", "--json", "--env-file", str(env_file),
                            "--config", str(CHAOS_CONFIG)], cwd=REPO, capture_output=True, text=True,
                           timeout=scale.timeout)
    assert swept.returncode == 0, swept.stderr[-2000:]
    sweep = json.loads(swept.stdout)
    run.note(f"seed {seed}, {lost} events lost, reconcile admitted {sweep['totals']['admitted']} "
             f"({sweep['totals']['covered']} covered)")
    run.finish(drop, checks=lambda: sweep_problems(run, drop, sweep, lost))


def sweep_problems(run, drop, sweep: dict, lost: int) -> list[str]:
    """The sweep admitted exactly the objects whose events were lost, and said so once.

    The message lists the admitted objects only up to report.MAX_LISTED_OBJECTS (``admitted`` is null
    beyond): the total is compared with the events lost, the names when they are listed.
    """
    problems = []
    inbox = run.env["INBOX_BUCKET"]
    total = sweep["totals"]["admitted"]
    if sweep["outcome"] != "RECOVERED" or total != lost:
        problems.append(f"the sweep admitted {total} objects, {lost} events were lost: {sweep['outcome']}")
    if sweep["admitted"] is not None:
        admitted = {item["uri"] for item in sweep["admitted"]}
        ours = {uri for uri in admitted if uri.startswith(f"gs://{inbox}/{drop.prefix}")}
        if len(ours) != total or admitted != ours:
            problems.append(f"the sweep listed {len(ours)} of this drop's objects (and {len(admitted - ours)} "
                            f"others) for {total} admitted")
    messages = [r for r in run.reader.received if r.data.get("schema") == "dicom-reconcile-result/v1"]
    if [m.data["sweep"] for m in messages] != [sweep["sweep"]]:
        problems.append(f"reconcile results published: {[m.data['sweep'] for m in messages]}, expected one")
    for message in messages:
        try:
            validate(message.data, message.attributes)
        except Exception as exc:  # noqa: BLE001 - reported with the rest
            problems.append(f"reconcile result does not match its schema: {exc}")
    return problems


# 9 -------------------------------------------------------------------------------------------------
EXPORT_FAULT_METHODS = ("dicomStores.export", "operations.get")


def test_export_requests_under_cloud_storage_and_api_faults(stack, scale, report):
    """Export requests, each published twice, while the API and Cloud Storage refuse calls: one result each."""
    run = Run("export-faults", stack, scale, report)
    env = stack.env
    rng = random.Random()
    drop = make_drop("export", scale.objects, scale.invalid_every, rng)
    upload(direct(env), drop.files)
    run.results_for(drop)  # the instances to export, imported before any fault
    first = pydicom.dcmread(io.BytesIO(dict(drop.files)[next(iter(drop.valid))]), stop_before_pixels=True)
    paths = [f"{first.StudyInstanceUID}/{first.SeriesInstanceUID}/{sop}" for sop in sorted(drop.valid.values())]
    count = max(2, scale.objects // 10)
    groups = {f"chaos-export-{uuid.uuid4().hex[:10]}": paths[i::count] for i in range(count)}
    folder = drop.prefix.rstrip("/")

    seed = seed_with_early_fault(rng, FAULT_RATE / 2)
    api_rates = {"rate429": FAULT_RATE / 2, "rate503": FAULT_RATE / 2}
    requests.put(faults_url(stack), json={"seed": seed, "methods": {m: api_rates for m in EXPORT_FAULT_METHODS}},
                 timeout=10).raise_for_status()
    gcs_spec = {"seed": seed, "methods": {"*": {"rate429": GCS_FAULT_RATE / 2, "rate503": GCS_FAULT_RATE / 2}}}
    requests.put(f"{proxy_url(stack)}/faults", json=gcs_spec, timeout=10).raise_for_status()
    pubsub = PubSubRest(env["PUBSUB_EMULATOR_HOST"])
    try:
        for _ in range(2):  # at-least-once: every request arrives twice
            for request_id, group in groups.items():
                body = {"requestId": request_id, "store": "main", "instances": group,
                        "destination": f"gs://{env['EXPORT_BUCKET']}/{folder}/{request_id}"}
                pubsub.publish(env["EXPORT_REQUESTS_TOPIC"], json.dumps(body).encode())
        run.reader.until(lambda got: set(groups) <= {r.data.get("requestId") for r in got}, scale.timeout,
                         quiet=scale.quiet)
    finally:
        requests.delete(faults_url(stack), timeout=10).raise_for_status()
        requests.delete(f"{proxy_url(stack)}/faults", timeout=10).raise_for_status()
    delta = Counters.read(stack) - run.before
    run.note(f"seed {seed}, {len(groups)} exports (each requested twice), {delta.injected} API and "
             f"{delta.gcs_injected} Cloud Storage calls refused")
    run.finish(drop, checks=lambda: export_problems(run, groups, folder))
    assert delta.injected + delta.gcs_injected > 0, "no fault fired: the scenario proved nothing"


def export_problems(run, groups: dict[str, list[str]], folder: str) -> list[str]:
    """One SUCCEEDED result per request, valid, counting its instances; exactly those files in its folder."""
    problems = []
    results = [r for r in run.reader.received if r.data.get("schema") == "dicom-export-result/v1"]
    by_request = Counter(r.data["requestId"] for r in results)
    bucket = storage(direct(run.env)).bucket(run.env["EXPORT_BUCKET"])
    for request_id, group in groups.items():
        mine = [r for r in results if r.data["requestId"] == request_id]
        if by_request[request_id] != 1:
            problems.append(f"export {request_id}: {by_request[request_id]} results, expected one")
        if not mine:
            continue
        data = mine[0].data
        try:
            validate(data, mine[0].attributes)
        except Exception as exc:  # noqa: BLE001 - reported with the rest
            problems.append(f"export {request_id}: result does not match the schema: {exc}")
        if data["outcome"] != "SUCCEEDED" or data["counter"]["success"] != len(group):
            problems.append(f"export {request_id}: {data['outcome']} {data['counter']} {data.get('error')}, "
                            f"expected SUCCEEDED with {len(group)} instances")
        exported = {blob.name.rsplit("/", 1)[-1].removesuffix(".dcm")
                    for blob in bucket.list_blobs(prefix=f"{folder}/{request_id}/")}
        if exported != {path.rsplit("/", 1)[-1] for path in group}:
            problems.append(f"export {request_id}: {len(exported)} files in its folder, expected {len(group)}")
    return problems
