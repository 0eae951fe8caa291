"""``backfill`` on the local stack: one call where exact, staging otherwise, resumable, dry run calls nothing."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localstack.samples import make_series, make_study
from tests.cli.stack_helpers import files
from tests.message_schemas import validate
from tests.pipes import PipeLines

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]


def result_lines(out: str, rule: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"  {rule}  ")]


def test_a_clean_prefix_is_one_import_call_resumed_not_repeated(cli, scenario):
    study = make_study(2, 3)
    scenario.upload(files(study, "legacy/"))
    scenario.upload([("legacy/readme.txt", b"not DICOM"), ("elsewhere/x.dcm", make_series(1)[0][1])])
    config = scenario.config()
    backfill = scenario.args(config, "backfill", f"gs://{scenario.bucket}/legacy/")
    before = scenario.stats()

    first = cli(*backfill, "--no-wait")
    assert first.code == 0, first.err
    assert (f"  rule {scenario.rule} -> store main: 6 objects in one import call of "
            f"gs://{scenario.bucket}/legacy/**.dcm\n") in first.out
    assert f"  skipped 1 object: no rule matches: gs://{scenario.bucket}/legacy/readme.txt\n" in first.out
    assert "admitted 6 objects into 1 batch:" in first.out

    second = cli(*backfill)  # the interrupted (no-wait) run, resumed and waited for
    assert second.code == 0, second.err
    [line] = result_lines(second.out, scenario.rule)
    assert " backfill-" in line and "SUCCEEDED  6 ok, 0 failed, 6 objects" in line
    assert scenario.calls_since(before).get("dicomStores.import") == 1
    assert scenario.sop_uids() == {uids.sop for uids, _ in study}

    [(message, attributes)] = scenario.results(1, rule=scenario.rule)
    validate(message, attributes)
    assert message["importUri"] == f"gs://{scenario.bucket}/legacy/**.dcm" and message["outcome"] == "SUCCEEDED"
    assert sorted(item["uri"] for item in message["objects"]) == \
        sorted(f"gs://{scenario.bucket}/{name}" for name, _ in files(study, "legacy/"))

    third = cli(*backfill)
    assert third.code == 0 and "(imported before this run)" in third.out
    assert "total: 0 import calls by this run (1 batch from before)" in third.out
    assert scenario.calls_since(before).get("dicomStores.import") == 1
    assert scenario.results(1, rule=scenario.rule, timeout=2) == []  # no second result message


def test_an_ignored_object_sends_the_rule_through_staging_and_an_interrupted_run_resumes(cli, scenario):
    series = make_series(3)
    scenario.upload(files(series, "a/"))
    scenario.upload([("tmp/draft.dcm", b"not DICOM")])
    config = scenario.config(ignore=["tmp/**"])
    backfill = scenario.args(config, "backfill", f"gs://{scenario.bucket}/")
    before = scenario.stats()

    process = subprocess.Popen([sys.executable, "-m", "handlers", *backfill], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = PipeLines(process.stdout), PipeLines(process.stderr)
    seen = []
    deadline = time.monotonic() + 60
    try:
        while f"rule {scenario.rule}: admitted: 3/3" not in "".join(seen):
            line = stderr.readline(timeout=deadline - time.monotonic())
            if not line:  # silent until the deadline (None) or ended ("")
                break
            seen.append(line)
        process.send_signal(signal.SIGINT)  # while it waits for the batch window
        process.wait(timeout=30)
        out, err = stdout.rest(timeout=5), "".join(seen) + stderr.rest(timeout=5)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130, err
    assert "interrupted: 3 of 3 objects admitted into 1 batch;" in err and "Run the same command again" in err
    assert "Traceback" not in err
    assert f"through staging, about 1 import call (gs://{scenario.bucket}/**.dcm also covers 1 listed object" in out
    assert f"  skipped 1 object: ignored by gs://{scenario.bucket}/tmp/**: gs://{scenario.bucket}/tmp/draft.dcm" in out

    rerun = cli(*backfill)
    assert rerun.code == 0, rerun.err
    assert "3 objects already covered before this run" in rerun.out
    [line] = result_lines(rerun.out, scenario.rule)
    assert " backfill-" not in line and "SUCCEEDED  3 ok, 0 failed, 3 objects" in line
    assert scenario.calls_since(before).get("dicomStores.import") == 1
    assert scenario.sop_uids() == {uids.sop for uids, _ in series}
    [(message, _)] = scenario.results(1, rule=scenario.rule)
    assert message["importUri"].startswith(f"gs://{scenario.state_bucket}/staging/{scenario.rule}/")
    assert scenario.names(scenario.state_bucket, f"staging/{scenario.rule}/") == []  # copies cleaned up


def test_dry_run_lists_every_object_and_its_uri_and_calls_nothing(cli, scenario):
    scenario.upload([("x/1.dcm", b"a"), ("x/2.dcm", b"b"), ("tmp/Doe^John.dcm", b"c")])
    config = scenario.config(ignore=["tmp/**"])
    before = scenario.stats()

    whole = cli(*scenario.args(config, "backfill", f"gs://{scenario.bucket}/", "--dry-run"))
    assert whole.code == 0, whole.err
    assert whole.out.startswith("dry run: nothing is written, published or imported\n")
    assert (f"gs://{scenario.state_bucket}/staging/{scenario.rule}/BATCH/*  (rule {scenario.rule}, staged, into "
            f"{scenario.store}; BATCH is assigned as each object is admitted):\n"
            f"  gs://{scenario.bucket}/x/1.dcm\n  gs://{scenario.bucket}/x/2.dcm\n") in whole.out
    assert f"not imported: gs://{scenario.bucket}/tmp/Doe^John.dcm: ignored by gs://{scenario.bucket}/tmp/**" \
        in whole.out

    folder = cli(*scenario.args(config, "backfill", f"gs://{scenario.bucket}/x/", "--dry-run"))
    assert f"gs://{scenario.bucket}/x/**.dcm  (rule {scenario.rule}, one call, into {scenario.store}):" in folder.out

    assert scenario.calls_since(before) == {}
    for prefix in (f"claims/{scenario.rule}/", f"batches/{scenario.rule}/", f"staging/{scenario.rule}/",
                   f"leases/{scenario.rule}"):
        assert scenario.names(scenario.state_bucket, prefix) == []
    assert scenario.results(1, rule=scenario.rule, timeout=1) == []


def test_a_missing_bucket_is_named(cli, scenario):
    config = scenario.config()
    other = scenario.bucket.replace("cli-src", "cli-gone")
    config_text = Path(config).read_text().replace(scenario.bucket, other)
    Path(config).write_text(config_text)
    result = cli(*scenario.args(config, "backfill", f"gs://{other}/"))
    assert result.code == 1
    assert result.err == f"error: bucket gs://{other} does not exist or is not visible: check the URI\n"
