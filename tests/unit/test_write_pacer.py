"""The state store never sends a second write of one object name within Cloud Storage's one-per-second limit."""

import pytest

from handlers.clients.storage import SAME_NAME_WRITE_INTERVAL, WritePacer
from tests.fakes import FakeClock


def test_a_second_write_of_the_same_name_waits_for_the_rest_of_the_second():
    clock = FakeClock(100.0)
    slept = []
    pacer = WritePacer(clock=clock, sleep=lambda s: (slept.append(s), clock.sleep(s)))
    pacer.before("batches/all/b.json")
    pacer.after("batches/all/b.json")
    clock.now += 0.3
    pacer.before("batches/all/other.json")  # another name: at once
    assert slept == []
    pacer.before("batches/all/b.json")
    assert slept == [pytest.approx(SAME_NAME_WRITE_INTERVAL - 0.3)]
    pacer.after("batches/all/b.json")
    clock.now += SAME_NAME_WRITE_INTERVAL
    pacer.before("batches/all/b.json")
    assert len(slept) == 1, "a second after the last write: at once"
