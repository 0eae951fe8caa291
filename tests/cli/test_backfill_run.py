"""Carrying out a backfill plan on in-memory fakes: records, driver messages, intake verdicts, waiting."""

import io
from types import SimpleNamespace

from handlers.batch import layout
from handlers.batch.layout import DONE, LISTED
from handlers.cli.backfill_plan import SourceObject, make_plan
from handlers.cli.backfill_run import (
    EARLIER,
    NEW,
    RESUMED,
    Tally,
    admit_staged,
    submit_exact,
    wait_for_batches,
    wait_for_sweep,
)
from handlers.cli.terminal import Progress
from handlers.config import parse
from handlers.batch.intake import Intake
from handlers.batch.reporting import ABANDONED_AFTER_SECONDS
from handlers.reconcile.progress import SWEEP_PATH
from tests.cli.conftest import CONFIG_ENV
from tests.fakes import FakeClock, MemoryStateStore

CONFIG = parse("""\
stores: {main: projects/p/locations/l/datasets/d/dicomStores/s}
rules:
  - {name: scans, match: 'gs://src/**.dcm', store: main}
ignore: [gs://src/tmp/**]
state: {bucket: state-bkt}
results: {topic: projects/p/topics/results}
followup: {topic: projects/p/topics/followups}
""", "c.yaml", CONFIG_ENV)


def runtime():
    store = MemoryStateStore()
    kicks = []
    clock = FakeClock()
    kick = lambda rule, batch: kicks.append((rule, batch))  # noqa: E731
    intake = Intake(store, CONFIG, kick=kick, clock=clock, sleep=clock.sleep)
    return SimpleNamespace(state=store, intake=intake, kick_batch=kick, kicks=kicks, clock=clock)


def exact_plan(*names):
    return make_plan(CONFIG, "src", "a/", [SourceObject(name, "1") for name in names])


def test_a_one_call_batch_is_recorded_listed_and_driven_once():
    rt = runtime()
    plan = exact_plan("a/1.dcm", "a/2.dcm")
    tally = Tally()
    submit_exact(rt, plan, plan.groups[0], tally, clock=rt.clock)
    [(key, how)] = tally.batches.items()
    assert how == NEW and rt.kicks == [key]
    record = rt.state.doc(layout.record_path(*key))
    assert record["state"] == LISTED and record["importUri"] == "gs://src/a/**.dcm"
    assert record["store"] == "projects/p/locations/l/datasets/d/dicomStores/s"
    assert [(m["name"], m["generation"], m["bucket"]) for m in record["members"]] == \
        [("a/1.dcm", "1", "src"), ("a/2.dcm", "1", "src")]
    assert {m["id"] for m in record["members"]} == {
        layout.object_id(SimpleNamespace(bucket="src", name=n, generation="1")) for n in ("a/1.dcm", "a/2.dcm")}


def test_a_rerun_resumes_without_a_second_driver_unless_the_batch_is_stale():
    rt = runtime()
    plan = exact_plan("a/1.dcm")
    submit_exact(rt, plan, plan.groups[0], Tally(), clock=rt.clock)
    again = Tally()
    submit_exact(rt, plan, plan.groups[0], again, clock=rt.clock)
    assert list(again.batches.values()) == [RESUMED] and len(rt.kicks) == 1
    rt.clock.sleep(ABANDONED_AFTER_SECONDS + 1)  # still listed: its first driver message was lost
    submit_exact(rt, plan, plan.groups[0], Tally(), clock=rt.clock)
    assert len(rt.kicks) == 2


def test_a_done_batch_is_reported_as_earlier_and_not_driven():
    rt = runtime()
    plan = exact_plan("a/1.dcm")
    submit_exact(rt, plan, plan.groups[0], Tally(), clock=rt.clock)
    [key] = rt.kicks
    path = layout.record_path(*key)
    rt.state.replace(path, {**rt.state.doc(path), "state": DONE}, rt.state.docs[path][1])
    rt.clock.sleep(ABANDONED_AFTER_SECONDS + 1)
    tally = Tally()
    submit_exact(rt, plan, plan.groups[0], tally, clock=rt.clock)
    assert tally.batches == {key: EARLIER} and tally.verdicts["duplicate"] == 1 and len(rt.kicks) == 1


def test_staged_objects_go_through_the_intake_and_a_rerun_counts_duplicates():
    rt = runtime()
    names = ["b/1.dcm", "b/2.dcm", "b/3.dcm"]
    for name in names[:2]:
        rt.state.add_source("src", name, "1")  # b/3.dcm was deleted after the listing
    plan = make_plan(CONFIG, "src", "", [SourceObject(n, "1") for n in names] + [SourceObject("tmp/x.dcm", "1")])
    [group] = plan.groups
    assert group.source is None
    tally = Tally()
    stream = io.StringIO()
    admit_staged(rt, plan, group, tally, Progress(stream, "admitted", 3))
    [(key, how)] = tally.batches.items()
    # Admission only marks membership: the deleted b/3.dcm is found (and reported as skipped) by the driver.
    assert how == NEW and tally.admitted == 3 and tally.skipped == {}
    assert tally.verdicts["opened"] + tally.verdicts["joined"] == 3 and rt.kicks == [key]
    assert len(list(rt.state.list(layout.member_prefix(*key)))) == 3
    assert stream.getvalue() == "admitted: 1/3\nadmitted: 2/3\n"

    again = Tally()
    admit_staged(rt, plan, group, again, Progress(io.StringIO(), "admitted", 3))
    assert again.verdicts["duplicate"] == 3 and again.batches == {key: EARLIER}


def test_waiting_returns_done_records_and_publishes_a_lost_driver_again():
    rt = runtime()
    plan = exact_plan("a/1.dcm")
    submit_exact(rt, plan, plan.groups[0], Tally(), clock=rt.clock)
    [key] = rt.kicks
    path = layout.record_path(*key)
    rt.clock.sleep(ABANDONED_AFTER_SECONDS + 1)

    def sleep(seconds):  # the driver picks the batch up after the second message
        if len(rt.kicks) == 2:
            rt.state.replace(path, {**rt.state.doc(path), "state": DONE, "result": {"outcome": "SUCCEEDED"}},
                             rt.state.docs[path][1])

    done = wait_for_batches(rt, [key], Progress(io.StringIO(), "done", 1), timeout=10, sleep=sleep, clock=rt.clock)
    assert done[key]["result"] == {"outcome": "SUCCEEDED"} and len(rt.kicks) == 2


def test_waiting_stops_at_the_timeout_with_what_is_done():
    rt = runtime()
    plan = exact_plan("a/1.dcm")
    submit_exact(rt, plan, plan.groups[0], Tally(), clock=rt.clock)
    [key] = rt.kicks
    assert wait_for_batches(rt, [key], Progress(io.StringIO(), "done", 1), timeout=0, sleep=lambda s: None,
                            clock=rt.clock) == {}


def test_a_run_cut_short_says_what_was_done_and_how_to_finish(cli, config_env, monkeypatch):
    from handlers.cli import backfill
    from handlers.cli.context import Context

    def admit(obj, rule, deadline):
        raise failure

    rt = runtime()
    rt.intake = SimpleNamespace(admit=admit)
    monkeypatch.setattr(Context, "runtime", property(lambda self: rt))
    monkeypatch.setattr(backfill, "list_objects", lambda bucket, prefix: [SourceObject("x.dcm", "1")])
    argv = ("backfill", "gs://inbox-bkt/no-folder-")  # not a folder: through the intake

    failure = RuntimeError("storage down")
    result = cli(*argv)
    assert result.code == 1
    assert result.err.splitlines()[-2:] == [
        "stopped by the error below: 0 of 1 object admitted into 0 batches; admitted objects are imported by the "
        "function and reported on the results topic. Run the same command again to import the rest: nothing is "
        "imported twice.",
        "error: unexpected error: RuntimeError: storage down"]

    failure = KeyboardInterrupt()
    result = cli(*argv)
    assert result.code == 130 and result.err.splitlines()[-1].startswith("interrupted: 0 of 1 object admitted")


def test_one_call_groups_wait_for_a_sweep_that_is_listing():
    rt = runtime()
    sweep = {"sweep": "sweep-1", "state": "running", "heartbeat": rt.clock()}
    generation = rt.state.create(SWEEP_PATH, sweep)
    notes, naps = [], []

    def nap(seconds: float) -> None:  # the sweep publishes after two polls
        naps.append(seconds)
        rt.clock.sleep(seconds)
        if len(naps) == 2:
            rt.state.replace(SWEEP_PATH, {**sweep, "state": "publishing"}, generation)

    wait_for_sweep(rt, notes.append, sleep=nap, clock=rt.clock)
    assert len(naps) == 2 and len(notes) == 1 and "sweep-1" in notes[0]


def test_a_sweep_whose_worker_went_quiet_is_not_waited_for():
    rt = runtime()
    rt.state.create(SWEEP_PATH, {"sweep": "sweep-2", "state": "running", "heartbeat": rt.clock() - 301})
    notes = []
    wait_for_sweep(rt, notes.append, sleep=lambda s: (_ for _ in ()).throw(AssertionError("waited")), clock=rt.clock)
    assert notes == []
