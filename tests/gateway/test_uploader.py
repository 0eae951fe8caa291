"""The uploader's ordering and scheduling, against in-memory buckets (no network)."""

from __future__ import annotations

import json
import threading
import time
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from gateway.commitment import JOURNAL_NAME, Ledger
from gateway.inbox import (CREATED, FUTURE_TOLERANCE, IDENTICAL, RECEIVED, REPLACED, STALE, GcsInbox, md5_of,
                           verdict)
from gateway.service import Gateway
from gateway.spool import Spool
from gateway.uploader import Uploader
from handlers.privacy import NamePolicy

from .helpers import FakeClock, captured_logs, make_config, wait_for

NAME = "in/CT1/1.2/1.2.3/1.2.3.4.dcm"
V1, V2, V3 = b"version-1" * 100, b"version-2" * 100, b"version-3" * 100


class FakeGcs:
    """``GcsInbox.put``'s algorithm over an in-memory bucket; uploads of ``slow`` bytes take longer.

    ``down`` makes every put fail (an outage); ``overlaps`` counts puts of one name running at once;
    ``clock`` is the uploading host's.
    """

    def __init__(self, slow: bytes = b"", clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.objects: dict[str, tuple[bytes, int]] = {}
        self.received: dict[str, float] = {}  # each object's RECEIVED metadata, as GcsInbox writes it
        self.generations: list[bytes] = []
        self.lock = threading.Lock()
        self.slow = slow
        self.down = False
        self.running: dict[str, int] = {}
        self.overlaps = 0

    def _upload(self, name: str, data: bytes, received: float, if_generation_match: int) -> bool:
        with self.lock:
            current = self.objects.get(name)
            if (current[1] if current else 0) != if_generation_match:
                return False
            self.objects[name] = (data, len(self.generations) + 1)
            self.received[name] = received
            self.generations.append(data)
            return True

    def put(self, name: str, data: bytes, received: float) -> str:
        with self.lock:
            self.running[name] = self.running.get(name, 0) + 1
            self.overlaps += self.running[name] > 1
        try:
            return self._put(name, data, received)
        finally:
            with self.lock:
                self.running[name] -= 1

    def _put(self, name: str, data: bytes, received: float) -> str:
        if self.down:
            raise ConnectionError("Cloud Storage is down")
        if data == self.slow:
            time.sleep(0.3)  # latency: an upload started later finishes first
        generation = 0
        while True:
            if self._upload(name, data, received, generation):
                return CREATED if generation == 0 else REPLACED
            with self.lock:
                existing = self.objects.get(name)
                theirs = self.received.get(name)
            if existing is None:
                generation = 0
                continue
            metadata = None if theirs is None else {RECEIVED: repr(theirs)}
            outcome = verdict(md5_of(existing[0]), metadata, md5_of(data), received, self.clock())
            if outcome is not None:
                return outcome
            generation = existing[1]

    def live(self, name: str) -> bytes:
        return self.objects[name][0]


def _uploader(spool: Spool, gcs: FakeGcs, **options: Any) -> Uploader:
    return Uploader(spool, lambda: gcs, bucket="b", threads=4, processes=0, max_backoff=0.05, **options)


def test_a_restart_never_puts_an_older_version_over_the_newer(tmp_path: Path) -> None:
    """Both versions are still in the spool's segment at the restart: the newer one stays live, no new generation."""
    spool = Spool(tmp_path / "spool", max_bytes=10_000_000)
    spool.recover()
    spool.append(NAME, V1, {"sopInstanceUID": "1.2.3.4"})
    spool.append(NAME, V2, {"sopInstanceUID": "1.2.3.4"})  # the modality re-sent a corrected instance
    gcs = FakeGcs(slow=V1)  # were both uploaded in parallel, the older would land last
    gcs.objects[NAME], gcs.generations = (V2, 2), [V1, V2]  # both uploaded, in order, before the restart
    spool.close()

    uploads = "uploads:\n  threads: 4\n  processes: 0\n  max_backoff_seconds: 0.05\n"
    dicom = "dicom:\n  ae_title: GW\n  address: 127.0.0.1\n  port: 0\n  calling_ae_titles: [CT1]\n"
    config = make_config(tmp_path / "spool", "bkt", uploads=uploads,
                         dicom=dicom + "commitment:\n  peers:\n    CT1: '127.0.0.1:1'\n")
    gateway = Gateway(config, inbox_factory=lambda: gcs)
    with captured_logs() as logs:
        gateway.start()
        try:
            wait_for(lambda: gateway.spool.stats().pending == 0, timeout=10, what="uploads")
            assert gateway.ledger is not None and gateway.ledger.committed("1.2.3.4") is True
        finally:
            gateway.stop()
    assert gcs.live(NAME) == V2 and gcs.generations == [V1, V2]
    assert [line["outcome"] for line in logs() if line["message"] == "instance uploaded"] == [IDENTICAL]
    assert len([line for line in logs() if line["message"].startswith("instance superseded")]) == 1
    assert list((tmp_path / "spool").glob("*.seg")) == []


def test_versions_queued_during_an_outage_land_newest_last(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    gcs = FakeGcs(slow=V1)
    gcs.down = True
    uploader = _uploader(spool, gcs)
    uploader.start()
    try:
        for version in (V1, V2, V3):
            uploader.submit(spool.append(NAME, version))
            time.sleep(0.1)  # each fails and waits for its retry
        gcs.down = False
        wait_for(lambda: spool.stats().pending == 0, timeout=10, what="uploads")
    finally:
        uploader.stop()
    assert gcs.live(NAME) == V3 and gcs.generations[-1] == V3
    assert gcs.overlaps == 0


class _Counting(FakeGcs):
    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def _put(self, name: str, data: bytes, received: float) -> str:
        with self.lock:
            self.attempts += 1
        return super()._put(name, data, received)


def test_an_outage_pauses_every_worker_instead_of_retrying_each_record_on_its_own(tmp_path: Path) -> None:
    """200 records during an outage: each on its own backoff would be hundreds of attempts in 3 s; failures in a
    row pause the whole uploader, and the first success after the outage lets everything through."""
    spool = Spool(tmp_path, max_bytes=100_000_000)
    spool.recover()
    gcs = _Counting()
    gcs.down = True
    uploader = Uploader(spool, lambda: gcs, bucket="b", threads=4, processes=0, max_backoff=2.0)
    uploader.start()
    try:
        for number in range(200):
            uploader.submit(spool.append(f"in/{number}.dcm", b"D" * 100))
        time.sleep(3.0)
        during = gcs.attempts
        gcs.down = False
        wait_for(lambda: spool.stats().pending == 0, timeout=20, what="uploads after the outage")
    finally:
        uploader.stop()
    assert during <= 40, f"{during} attempts in 3 s of outage"
    assert len(gcs.objects) == 200


def test_uploads_of_one_name_never_overlap(tmp_path: Path) -> None:
    """A newer version submitted while the older one uploads waits for it, then replaces it."""
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    gcs = FakeGcs(slow=V1)
    uploader = _uploader(spool, gcs)
    uploader.start()
    try:
        uploader.submit(spool.append(NAME, V1))
        wait_for(lambda: gcs.running.get(NAME), timeout=5, what="the first upload")
        uploader.submit(spool.append(NAME, V2))
        wait_for(lambda: spool.stats().pending == 0, timeout=10, what="uploads")
    finally:
        uploader.stop()
    assert gcs.overlaps == 0 and gcs.generations == [V1, V2] and gcs.live(NAME) == V2


def test_a_superseded_instance_is_committed_once_its_newer_version_is_in_the_bucket(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / JOURNAL_NAME)
    spool = Spool(tmp_path / "spool", max_bytes=10_000_000)
    spool.recover()
    gcs = FakeGcs()
    gcs.down = True
    uploader = _uploader(spool, gcs, on_uploaded=ledger.uploaded, on_superseded=ledger.superseded)
    uploader.start()
    try:
        for version in (V1, V2):
            record = spool.append(NAME, version, {"sopInstanceUID": "1.2.3.4"})
            ledger.spooled(record)
            uploader.submit(record)
        time.sleep(0.3)  # the older version is skipped at its next attempt, the newer one still fails
        assert ledger.committed("1.2.3.4") is False
        gcs.down = False
        wait_for(lambda: ledger.committed("1.2.3.4"), timeout=10, what="the newer version uploaded")
    finally:
        uploader.stop()
        ledger.close()
    assert gcs.generations == [V2]


def test_an_older_version_alone_in_the_spool_after_a_restart_is_stale_not_uploaded(tmp_path: Path) -> None:
    """The older version's segment outlives the newer one's (kept by a record that keeps failing): after a restart
    that lost the note of its upload (the ``.ack`` file, not fsynced: a power loss) the spool holds only the older
    version, and the bucket's newer one (received later) must stay live."""
    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=900)
    spool.recover()
    gcs = _Refusing(b"p" * 100)
    uploader = _uploader(spool, gcs)
    uploader.start()
    uploader.submit(spool.append("poison.dcm", b"p" * 100))  # segment A, kept on disk by this record
    uploader.submit(spool.append(NAME, V1))  # segment A (sealed: past 900 bytes)
    wait_for(lambda: gcs.objects.get(NAME), timeout=5, what="v1")
    uploader.submit(spool.append(NAME, V2))  # segment B, uploaded, then deleted
    wait_for(lambda: gcs.objects.get(NAME, (b"",))[0] == V2, timeout=5, what="v2")
    uploader.stop()
    spool.close()
    for ack in tmp_path.glob("*.ack"):
        ack.unlink()

    restarted = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=900)
    again = _uploader(restarted, gcs)
    with captured_logs() as logs:
        again.start()
        for record in restarted.recover():
            again.submit(record)
        wait_for(lambda: any(line.get("outcome") == STALE for line in logs()), timeout=5, what="v1 found stale")
        again.stop()
    assert gcs.live(NAME) == V2 and gcs.generations == [V1, V2], "no third generation, the newer version live"


def test_a_clock_stepped_back_between_two_receptions_does_not_make_the_newer_version_stale(tmp_path: Path) -> None:
    """NTP steps the clock back half a second between an instance and its corrected re-send: the re-send is still
    stamped after the first version, and replaces it in the bucket (it used to be found ``stale``, and lost)."""
    clock = FakeClock()
    spool = Spool(tmp_path, max_bytes=10_000_000, clock=clock)
    spool.recover()
    gcs = FakeGcs()
    uploader = _uploader(spool, gcs)
    uploader.start()
    try:
        uploader.submit(spool.append(NAME, V1))
        wait_for(lambda: gcs.objects.get(NAME), timeout=5, what="v1")
        clock.now -= 0.5
        uploader.submit(spool.append(NAME, V2))
        wait_for(lambda: spool.stats().pending == 0, timeout=5, what="v2 done with")
    finally:
        uploader.stop()
    assert gcs.live(NAME) == V2 and gcs.generations == [V1, V2]


def test_after_a_restart_on_a_clock_stepped_back_a_new_version_replaces_an_object_received_in_the_future(
        tmp_path: Path) -> None:
    """The spool is empty (the first version uploaded, its segment deleted), and the clock was stepped back a minute
    while the gateway was down: the bucket's object seems received in the future. The new version replaces it."""
    clock = FakeClock()
    gcs = FakeGcs(clock=clock)
    gcs.objects[NAME], gcs.received[NAME], gcs.generations = (V1, 1), clock.now + 60, [V1]
    spool = Spool(tmp_path, max_bytes=10_000_000, clock=clock)
    assert spool.recover() == []
    uploader = _uploader(spool, gcs)
    with captured_logs() as logs:
        uploader.start()
        try:
            uploader.submit(spool.append(NAME, V2))
            wait_for(lambda: spool.stats().pending == 0, timeout=5, what="v2 done with")
        finally:
            uploader.stop()
    assert gcs.live(NAME) == V2 and gcs.generations == [V1, V2]
    warnings = [line for line in logs() if line["severity"] == "WARNING"]
    assert [line["message"] for line in warnings] == ["object received in the future: clock stepped back?"]
    assert warnings[0]["objectReceived"] == clock.now + 60 and warnings[0]["aheadSeconds"] == 60
    assert [line["outcome"] for line in logs() if line["message"] == "instance uploaded"] == [REPLACED]


def test_an_upload_stuck_after_the_clock_stepped_back_still_ages_and_fails_the_health_check(tmp_path: Path) -> None:
    """Before: ages were taken from the reception stamps, which never go back: after records stamped by a clock an
    hour ahead (kept in the spool, seeding the stamps at the restart), a new instance was stamped an hour ahead of
    the corrected clock, its age stayed 0 while its upload was stuck (``/healthz`` 200), its waitedSeconds < 0."""
    from gateway.health import Health

    clock = FakeClock()
    clock.now += 3600  # the host's clock ran an hour ahead
    spool = Spool(tmp_path, max_bytes=10_000_000, clock=clock)
    spool.recover()
    spool.done(spool.append("in/early.dcm", V1))  # uploaded, still in the current segment: it seeds the stamps
    spool.close()
    clock.now -= 3600  # NTP steps it back; the gateway restarts
    spool = Spool(tmp_path, max_bytes=10_000_000, clock=clock)
    spool.recover()
    record = spool.append(NAME, V2)
    assert record.received > clock.now + 3599  # still stamped after the early one: it is the newer version
    clock.now += 700  # its upload is stuck (Cloud Storage down) for 700 s
    assert spool.stats().oldest_age == 700
    health = Health(spool, address="127.0.0.1", port=0, stuck_after=600, stats_every=60, listening=lambda: True)
    try:
        healthy, body = health.check()
    finally:
        health.stop()
    assert not healthy and "the oldest spooled instance waits for 700 s" in body["problems"][0]
    gcs = FakeGcs(clock=clock)
    with captured_logs() as logs:
        uploader = _uploader(spool, gcs)
        uploader.start()
        try:
            uploader.submit(record)
            wait_for(lambda: spool.stats().pending == 0, timeout=5, what="the upload")
        finally:
            uploader.stop()
    assert [line["waitedSeconds"] for line in logs() if line["message"] == "instance uploaded"] == [700]


def test_a_record_stamped_ahead_of_the_clock_ages_from_the_restart_that_found_it(tmp_path: Path) -> None:
    clock = FakeClock()
    clock.now += 3600
    spool = Spool(tmp_path, max_bytes=10_000_000, clock=clock)
    spool.recover()
    spool.append(NAME, V1)  # never uploaded
    spool.close()
    clock.now -= 3600
    spool = Spool(tmp_path, max_bytes=10_000_000, clock=clock)
    [record] = spool.recover()
    clock.now += 30
    assert spool.stats().oldest_age == 30 and record.arrived == clock.now - 30


def test_the_inbox_never_replaces_a_version_received_later(bucket: str, fake_gcs: Any, storage_client: Any) -> None:
    """GcsInbox on fake-gcs-server: each upload carries its reception time; an older one finds the newer object."""
    inbox = GcsInbox(bucket, endpoint=fake_gcs.url)
    assert inbox.put(NAME, V2, 200.0) == CREATED
    assert inbox.put(NAME, V1, 100.0) == STALE
    assert storage_client.bucket(bucket).blob(NAME).download_as_bytes() == V2
    assert inbox.put(NAME, V3, 300.0) == REPLACED
    blob = storage_client.bucket(bucket).get_blob(NAME)
    assert blob.download_as_bytes() == V3 and blob.metadata == {RECEIVED: "300.0"}
    assert inbox.put(NAME, V3, 50.0) == IDENTICAL, "identical bytes are identical, whenever received"
    stepped_back = GcsInbox(bucket, endpoint=fake_gcs.url, clock=lambda: 100.0)  # 300.0 is in its future
    assert stepped_back.put(NAME, V1, 100.0) == REPLACED
    assert storage_client.bucket(bucket).blob(NAME).download_as_bytes() == V1


def test_an_object_the_gateway_did_not_write_is_replaced_when_it_differs() -> None:
    assert verdict(md5_of(V1), None, md5_of(V2), 1.0, 1.0) is None
    assert verdict(md5_of(V1), {RECEIVED: "not a time"}, md5_of(V2), 1.0, 1.0) is None
    assert verdict(md5_of(V1), {RECEIVED: "2.0"}, md5_of(V2), 1.0, 2.0) == STALE
    assert verdict(md5_of(V1), {RECEIVED: "0.5"}, md5_of(V2), 1.0, 2.0) is None


def test_only_an_object_received_past_the_tolerance_ahead_of_the_clock_is_taken_for_a_clock_step() -> None:
    """Received later than ours but not in the future: stale. Past ``FUTURE_TOLERANCE`` ahead of the clock: replaced."""
    assert verdict(md5_of(V1), {RECEIVED: repr(10.0 + FUTURE_TOLERANCE)}, md5_of(V2), 5.0, 10.0) == STALE
    with captured_logs() as logs:
        assert verdict(md5_of(V1), {RECEIVED: repr(10.5 + FUTURE_TOLERANCE)}, md5_of(V2), 5.0, 10.0) is None
    assert [line["message"] for line in logs()] == ["object received in the future: clock stepped back?"]


def test_recovery_returns_records_in_the_order_they_were_spooled(tmp_path: Path) -> None:
    """The uploader takes the last record submitted for a name as the newest: a restart submits in spool order."""
    spool = Spool(tmp_path, max_bytes=10_000_000, segment_bytes=2500)
    spool.recover()
    names = [f"o/{number % 3}.dcm" for number in range(12)]
    appended = [spool.append(name, bytes([number]) * 1000) for number, name in enumerate(names)]
    spool.close()
    recovered = Spool(tmp_path, max_bytes=10_000_000).recover()
    assert len({record.segment for record in recovered}) > 1
    assert [record.read() for record in recovered] == [record.read() for record in appended]


class _Refusing(FakeGcs):
    """Refuses for good (403: a changed re-send, and no storage.objects.delete) the bytes in ``refused``."""

    def __init__(self, *refused: bytes) -> None:
        super().__init__()
        self.refused = refused

    def _put(self, name: str, data: bytes, received: float) -> str:
        if data in self.refused:
            raise PermissionError("403 storage.objects.delete denied: a changed re-send cannot replace")
        return super()._put(name, data, received)


def test_records_that_keep_failing_do_not_hold_up_the_others(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    poison = [b"changed-%d" % number for number in range(4)]
    gcs = _Refusing(*poison)
    uploader = Uploader(spool, lambda: gcs, bucket="b", threads=2, processes=0, max_backoff=0.2)
    with captured_logs() as logs:
        uploader.start()
        try:
            for number, data in enumerate(poison):  # twice as many as threads, first in the queue
                uploader.submit(spool.append(f"changed/{number}.dcm", data))
            for number in range(20):
                uploader.submit(spool.append(f"fine/{number}.dcm", b"fine-%d" % number))
            wait_for(lambda: len(gcs.objects) == 20, timeout=10, what="the other instances uploaded")
            wait_for(lambda: len([line for line in logs() if line["message"] == "upload failed, will retry"]) >= 12,
                     timeout=10, what="the refused ones retried")
        finally:
            uploader.stop()
    assert spool.stats().pending == 4  # the refused ones stay in the spool, retried
    retries = [line for line in logs() if line["message"] == "upload failed, will retry"]
    assert {line["object"] for line in retries} == {f"gs://b/changed/{number}.dcm" for number in range(4)}
    assert max(line["attempt"] for line in retries) >= 3


def test_a_newer_version_replaces_an_older_one_that_keeps_failing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    gcs = _Refusing(V1)
    uploader = _uploader(spool, gcs)
    uploader.start()
    try:
        uploader.submit(spool.append(NAME, V1))
        time.sleep(0.3)  # refused, retried, refused...
        uploader.submit(spool.append(NAME, V2))
        wait_for(lambda: spool.stats().pending == 0, timeout=10, what="the newer version uploaded")
        time.sleep(0.3)  # room for a retry of the older version, were one still scheduled
    finally:
        uploader.stop()
    assert gcs.generations == [V2] and gcs.overlaps == 0


UIDS = ("1.2.840.99.1", "1.2.840.99.2", "1.2.840.99.3")
HASHED_NAME = f"modalities/CT1/{UIDS[0]}/{UIDS[1]}/{UIDS[2]}.dcm"


class _ResendWhileDown(BaseHTTPRequestHandler):
    """The object exists (412 to the create); reading it back fails with a reason naming it, as servers do."""

    def _answer(self, code: int, message: str) -> None:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(412, "conditionNotMet")

    def do_GET(self) -> None:  # noqa: N802
        self._answer(503, f"backend error reading bkt/{HASHED_NAME}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def failing_gcs() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ResendWhileDown)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.mark.parametrize("processes", [0, 1])
def test_hashed_names_stay_out_of_upload_errors(tmp_path: Path, failing_gcs: str, processes: int) -> None:
    """The error of a failed attempt names the request's URL and the server's reason: neither may show the UIDs."""
    spool = Spool(tmp_path, max_bytes=10_000_000)
    spool.recover()
    uploader = Uploader(spool, partial(GcsInbox, "bkt", endpoint=failing_gcs), bucket="bkt", threads=1,
                        processes=processes, max_backoff=0.05, names=NamePolicy("hashed"))
    with captured_logs() as logs:
        uploader.start()
        try:
            uploader.submit(spool.append(HASHED_NAME, b"D" * 100))
            wait_for(lambda: [line for line in logs() if line["message"] == "upload failed, will retry"], timeout=60,
                     what="a failed attempt")
        finally:
            uploader.stop()
    assert not any(uid in json.dumps(entry) for entry in logs() for uid in UIDS)
    line = next(line for line in logs() if line["message"] == "upload failed, will retry")
    hashed = NamePolicy("hashed").uri("bkt", HASHED_NAME)
    assert line["object"] == hashed and line["httpStatus"] == 503
    assert line["error"].startswith("ServiceUnavailable: 503 GET ") and line["error"].count(hashed) == 2


@pytest.mark.parametrize("stop", ["clean", "killed"])
def test_a_restart_uploads_nothing_already_uploaded(tmp_path: Path, stop: str) -> None:
    """Records uploaded from the current (unsealed) segment are not tried again after a restart, whether the
    gateway was stopped or killed (the first gateway's spool left open as a SIGKILL leaves its files)."""
    from localstack import samples

    from .helpers import read_dataset, send

    gcs = _Counting()
    uploads = "uploads:\n  threads: 2\n  processes: 0\n  max_backoff_seconds: 0.05\n"
    config = make_config(tmp_path / "spool", "bkt", uploads=uploads)
    first = Gateway(config, inbox_factory=lambda: gcs)
    first.start()
    try:
        series = samples.make_series(5, rows=16, cols=16)
        assert send(first.receiver.port, [read_dataset(data) for _, data in series]) == [0] * 5
        wait_for(lambda: first.spool.stats().pending == 0, timeout=10, what="uploads")
        assert gcs.attempts == 5 and first.spool.stats().segments == 1  # the current segment, not sealed
        if stop == "clean":
            first.stop()
        second = Gateway(config, inbox_factory=lambda: gcs)
        with captured_logs() as logs:
            second.start()
            second.stop()
    finally:
        first.stop()
    assert gcs.attempts == 5, "an instance uploaded before the restart was uploaded again"
    assert [line["pending"] for line in logs() if line["message"] == "spool resumed"] == [0]
    assert list((tmp_path / "spool").iterdir()) == []
