"""Reads shared by the admissions in flight in one instance (handlers/batch/sharedreads.py).

The property the batching protocol rests on: a caller is only ever answered by
a read that started after the moment it names (for the seal check, after its
own marker was written), however many callers share it.
"""

import threading
import time

from handlers.batch import layout
from handlers.batch.intake import JOINED, OPENED
from handlers.batch.sharedreads import MAX_KEPT, SharedReads
from handlers.retry import Deadline
from tests.unit.test_batching import World


class SteppedClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class GatedRead:
    """A read that blocks until the test opens its gate, counting calls and returning the call number."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.gate = threading.Event()

    def __call__(self) -> int:
        self.calls += 1
        self.started.set()
        assert self.gate.wait(5)
        return self.calls


def in_thread(target, *args):
    results: list = []
    thread = threading.Thread(target=lambda: results.append(target(*args)))
    thread.start()
    return thread, results


def test_callers_that_needed_a_read_before_it_started_share_it():
    clock, read = SteppedClock(), GatedRead()
    shared = SharedReads(clock)
    clock.now = 1.0
    leader, led = in_thread(shared.get, "k", read, 0.5)
    assert read.started.wait(5)
    followers = [in_thread(shared.get, "k", read, 0.9) for _ in range(5)]
    time.sleep(0.05)
    read.gate.set()
    for thread, _ in [(leader, led), *followers]:
        thread.join(5)
    assert read.calls == 1
    assert led == [1] and all(result == [1] for _, result in followers)


def test_a_caller_that_needs_a_read_after_the_one_in_flight_gets_a_new_one():
    """The seal check after a marker: a read sent before the marker was written must not answer it."""
    clock, read = SteppedClock(), GatedRead()
    shared = SharedReads(clock)
    clock.now = 1.0
    first, first_result = in_thread(shared.get, "k", read, 0.5)
    assert read.started.wait(5)
    clock.now = 2.0  # the caller's own write finished after the read in flight started
    late, late_result = in_thread(shared.get, "k", read, 2.0)
    time.sleep(0.05)
    clock.now = 3.0
    read.gate.set()
    first.join(5)
    late.join(5)
    assert first_result == [1]
    assert late_result == [2], "answered by a read that started before it needed one"
    assert read.calls == 2


def test_one_caller_after_another_reads_each_time():
    shared = SharedReads()
    calls = []
    for _ in range(3):
        shared.get("k", lambda: calls.append(1), shared.clock())
    assert len(calls) == 3


def test_different_keys_never_share():
    shared = SharedReads()
    assert shared.get("a", lambda: "A", shared.clock()) == "A"
    assert shared.get("b", lambda: "B", shared.clock()) == "B"


def test_an_error_reaches_every_caller_that_shared_the_read():
    clock = SteppedClock()
    shared = SharedReads(clock)
    gate, started = threading.Event(), threading.Event()

    def failing() -> None:
        started.set()
        gate.wait(5)
        raise TimeoutError("storage unavailable")

    errors: list[BaseException] = []

    def call(not_before: float) -> None:
        try:
            shared.get("k", failing, not_before)
        except TimeoutError as exc:
            errors.append(exc)

    clock.now = 1.0
    threads = [threading.Thread(target=call, args=(0.5,))]
    threads[0].start()
    assert started.wait(5)
    threads += [threading.Thread(target=call, args=(0.5,)) for _ in range(3)]
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.05)
    gate.set()
    for thread in threads:
        thread.join(5)
    assert len(errors) == 4


def test_finished_reads_are_forgotten_past_the_limit():
    shared = SharedReads()
    for number in range(MAX_KEPT + 50):
        shared.get(("seal", number), lambda: None, shared.clock())
    assert len(shared._reads) <= MAX_KEPT + 1


class SlowReads(World):
    """Reads take 20 ms, as round trips do, so concurrent admissions overlap."""

    def __init__(self) -> None:
        super().__init__()
        read = self.store.read

        def slow_read(path):
            time.sleep(0.02)
            return read(path)

        self.store.read = slow_read


def test_concurrent_admissions_share_their_lease_and_seal_reads_and_all_join_one_batch():
    world = SlowReads()
    objects = [world.upload(f"burst/{number:02d}.dcm") for number in range(20)]
    start = threading.Barrier(len(objects))
    verdicts: list[str] = []

    def admit(obj):
        start.wait(5)
        verdicts.append(world.intake.admit(obj, world.rule, Deadline(30)))

    threads = [threading.Thread(target=admit, args=(obj,)) for obj in objects]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(verdicts) == [JOINED] * 19 + [OPENED]
    [batch] = {batch for _, batch in world.kicks}
    assert len(list(world.store.list(layout.member_prefix("all", batch)))) == 20
    reads = [path for op, path in world.store.ops if op == "read"]
    lease_reads = reads.count(layout.lease_path("all"))
    seal_reads = reads.count(layout.seal_path("all", batch))
    assert lease_reads < len(objects), "every admission read the lease itself"
    assert seal_reads < 2 * len(objects), "every admission read the seal itself"
