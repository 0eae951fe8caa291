"""A batch that failed as a whole (its import refused, or ended with an error naming no file), or whose outcome is
UNKNOWN, is in the ``failed/`` index, and the ``failures`` and ``retry`` tools treat each of its members as failed.

The batching world of tests/unit/test_batching (in-memory state, scripted API); the commands run
in-process on its state store, as ``python -m handlers`` would on the bucket.
"""

import io
import json
from types import SimpleNamespace

import pytest

from handlers.batch import layout
from handlers.batch.layout import DONE
from handlers.cli import build_parser
from handlers.cli.context import Context
from handlers.clients.healthcare import ApiError
from handlers.retry import RetryLater
from localstack.samples import make_instance, new_uid
from tests.unit.test_batching import World
from tests.unit.test_failures import Drop

REFUSAL = "caller lacks healthcare.dicomStores.import"


def run(world: World, *argv: str) -> list[str]:
    """The command's stdout lines, run on the world's state store."""
    return run_both(world, *argv)[0]


def run_both(world: World, *argv: str) -> tuple[list[str], list[str]]:
    """The command's (stdout lines, stderr lines), run on the world's state store."""
    args = build_parser().parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    ctx = Context("config.yaml", out, err)
    ctx.__dict__.update(config=world.config, runtime=SimpleNamespace(
        state=world.store, kick_batch=lambda rule, batch: world.kicks.append((rule, batch))))
    assert args.run(ctx, args) == 0
    return out.getvalue().splitlines(), err.getvalue().splitlines()


def two_files(world: World) -> str:
    world.admit(world.upload("a.dcm"))
    world.admit(world.upload("b.dcm"))
    world.clock.now += 11
    return world.kicks[0][1]


def rejected_batch(world: World) -> str:
    batch = two_files(world)
    world.api.import_errors = [ApiError(403, "PERMISSION_DENIED", REFUSAL)]
    assert world.drive(batch) == DONE
    return batch


def test_a_rejected_batch_is_retried_whole_once(config_env):
    world = World()
    batch = rejected_batch(world)
    [result] = world.results()
    assert (result["outcome"], result["failures"]) == ("REJECTED", [])
    origin = world.store.doc(layout.record_path("all", batch))
    child = f"{batch}-retry1"
    assert run(world, "retry", batch) == [
        f"retried  gs://inbox-bkt/{name}  generation 1  other  from {batch}  in {child}" for name in ("a.dcm", "b.dcm")
    ] + [f"2 files retried in 1 batch ({child}): follow their results with `python -m handlers tail`"]
    record = world.store.doc(layout.record_path("all", child))
    assert record["members"] == origin["members"] and record["retryOf"] == batch
    assert world.kicks[-1] == ("all", child)
    assert run(world, "retry", batch) == ["0 files retried in 0 batches"], "the first retry took every member over"


def test_retry_failed_since_finds_a_rejected_batch(config_env):
    world = World()
    batch = rejected_batch(world)
    [entry] = world.store.list(layout.failed_index_prefix())
    assert entry.name == layout.failed_index_path("all", batch)
    assert entry.metadata["failures"] == "2" and entry.metadata["kinds"] == "other"
    assert run(world, "retry", "--failed-since", "1h")[-1].startswith(f"2 files retried in 1 batch ({batch}-retry1)")


def test_failures_lists_a_rejected_batch_as_one_line_with_its_error(config_env):
    world = World()
    batch = rejected_batch(world)
    [line] = run(world, "failures", "--since", "1h")
    concluded = world.results()[0]["timings"]["concludedAt"]
    assert line == f"{concluded}  all  {batch}  other  all 2 files  batch  {REFUSAL}"
    run(world, "retry", batch)
    [row] = [json.loads(text) for text in run(world, "failures", "--since", "1h", "--json")]
    assert row == {"concludedAt": concluded, "rule": "all", "batch": batch, "wholeBatch": True, "objectCount": 2,
                   "kind": "other", "error": {"code": 403, "message": REFUSAL}, "source": "batch",
                   "sinceThen": f"imported again in {batch}-retry1"}
    assert run(world, "failures", "--since", "1h", "--kind", "empty") == []


def test_an_operation_ending_with_an_error_and_no_file_named_is_retried_whole(config_env):
    world = World()
    drop = Drop(world, {"a.dcm": b"x" * 200, "b.dcm": b"y" * 200})
    denied = {"code": 7, "message": "PERMISSION_DENIED: the service agent cannot read the staging copies"}
    world.api.finish(drop.operation, success=0, failure=0, error=denied)
    assert world.drive(drop.batch) == DONE
    assert world.results()[0]["outcome"] == "FAILED" and world.results()[0]["failures"] == []
    assert run(world, "failures", "--since", "1h")[0].endswith(f"all 2 files  batch  {denied['message']}")
    assert run(world, "retry", drop.batch)[-1].startswith(f"2 files retried in 1 batch ({drop.batch}-retry1)")


def test_a_batch_with_named_failures_is_retried_only_for_those(config_env):
    world = World()
    drop = Drop(world, {"a.dcm": b"", "b.dcm": make_instance(new_uid(), new_uid(), new_uid())})
    drop.log("a.dcm", "empty DICOM instance found")
    drop.finish(success=1, failure=1)
    assert world.drive(drop.batch) == DONE
    assert run(world, "retry", drop.batch)[0].startswith("retried  gs://inbox-bkt/a.dcm  generation 7  empty")
    [member] = world.store.doc(layout.record_path("all", f"{drop.batch}-retry1"))["members"]
    assert member["name"] == "a.dcm"


def unknown_batch(world: World) -> str:
    """Two files whose operation is still running when the follow-up deadline (1 h) passes."""
    batch = two_files(world)
    with pytest.raises(RetryLater):
        world.drive(batch)
    world.clock.now += 3601
    assert world.drive(batch) == DONE
    assert world.results()[0]["outcome"] == "UNKNOWN"
    return batch


def test_a_batch_whose_outcome_is_unknown_is_listed_with_kind_unknown_and_retried_whole(config_env):
    world = World()
    batch = unknown_batch(world)
    [entry] = world.store.list(layout.failed_index_prefix())
    assert entry.name == layout.failed_index_path("all", batch) and entry.metadata["kinds"] == "unknown"
    reason = "operation not done after 1 h: no longer followed"
    assert run(world, "failures", "--since", "1h", "--kind", "unknown") == [
        f"{world.results()[0]['timings']['concludedAt']}  all  {batch}  unknown  all 2 files  batch  {reason}"]
    assert run(world, "failures", "--since", "1h", "--kind", "other") == []
    child = f"{batch}-retry1"
    assert run(world, "retry", "--failed-since", "1h", "--kind", "unknown") == [
        f"retried  gs://inbox-bkt/{name}  generation 1  unknown  from {batch}  in {child}" for name in ("a.dcm", "b.dcm")
    ] + [f"2 files retried in 1 batch ({child}): follow their results with `python -m handlers tail`"]
    assert world.store.doc(layout.record_path("all", child))["retryOf"] == batch


def test_a_batch_whose_operation_cannot_be_read_is_listed_as_unknown(config_env):
    world = World()
    batch = two_files(world)
    world.api.get_errors = [ApiError(404, "NOT_FOUND", "operation not found")]
    assert world.drive(batch) == DONE
    assert world.results()[0]["outcome"] == "UNKNOWN"
    [line] = run(world, "failures", "--since", "1h")
    assert line.endswith(f"{batch}  unknown  all 2 files  batch  operation not found")


def rejected_while_an_older_batch_hangs(world: World) -> tuple[str, str]:
    """(older, newer): the older batch opens first but concludes last (UNKNOWN, an hour on), after the newer
    batch is REJECTED: newest first means by conclusion, not by batch id."""
    older = two_files(world)
    with pytest.raises(RetryLater):
        world.drive(older)  # its import is running, and never ends
    world.admit(world.upload("c.dcm"))
    world.clock.now += 11
    newer = world.kicks[-1][1]
    assert newer != older and newer > older, "batch ids start with their opening time"
    world.api.import_errors = [ApiError(403, "PERMISSION_DENIED", REFUSAL)]
    assert world.drive(newer) == DONE
    world.clock.now += 3601
    assert world.drive(older) == DONE
    outcomes = {result["batch"]: result["outcome"] for result in world.results()}
    assert outcomes == {older: "UNKNOWN", newer: "REJECTED"}
    return older, newer


def test_failures_lists_the_batch_concluded_last_first(config_env):
    world = World()
    older, newer = rejected_while_an_older_batch_hangs(world)
    concluded = {result["batch"]: result["timings"]["concludedAt"] for result in world.results()}
    assert concluded[older] > concluded[newer]
    lines = run(world, "failures", "--since", "2h")
    assert [line.split("  ")[2] for line in lines] == [older, newer], lines
    assert lines[0].startswith(f"{concluded[older]}  all  {older}  unknown")
    rows = [json.loads(text) for text in run(world, "failures", "--since", "2h", "--json")]
    assert [row["batch"] for row in rows] == [older, newer]


def test_retry_says_how_many_batches_it_went_through_on_stderr(config_env):
    world = World()
    older, newer = rejected_while_an_older_batch_hangs(world)
    out, err = run_both(world, "retry", "--failed-since", "2h")
    assert err == ["batches: 1/2", "batches: 2/2"], "a plain line per tenth (not a terminal), then the last state"
    assert out[-1].startswith(f"3 files retried in 2 batches ({older}-retry1, {newer}-retry1)")
    out, err = run_both(world, "retry", newer)
    assert err == ["batches: 1/1"] and out == ["0 files retried in 0 batches"]
