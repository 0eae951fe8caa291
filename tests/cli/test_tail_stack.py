"""``tail`` on the local stack: one line per result, acknowledged; stops at N, when idle, or quietly on Ctrl-C."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipes import PipeLines

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]

IMPORT = {"schema": "dicom-import-result/v1", "outcome": "SUCCEEDED", "rule": "all-dicom",
          "store": "projects/local-project/locations/us-central1/datasets/local-dataset/dicomStores/local-store",
          "batch": "b-ok", "operation": "projects/local-project/locations/us-central1/datasets/local-dataset/operations/11",
          "counter": {"success": 7, "failure": 0}, "error": None}
EXPORT = {"schema": "dicom-export-result/v1", "outcome": "FAILED", "requestId": "req-bad",
          "store": IMPORT["store"], "operation": None, "counter": {"success": 0, "failure": 2},
          "error": {"code": 13, "message": "2 instances failed"}}


def publish(scenario, *messages):
    for data in messages:
        scenario.pubsub.publish(scenario.stack.env["RESULTS_TOPIC"], json.dumps(data).encode(),
                                {"outcome": data["outcome"]})


def test_each_result_is_one_line_and_acknowledged(cli, scenario):
    publish(scenario, IMPORT, EXPORT)
    short_name = scenario.subscription.rsplit("/", 1)[1]  # completed with GOOGLE_CLOUD_PROJECT from the env file
    result = cli("--env-file", str(scenario.env_file), "tail", "--subscription", short_name, "--max-messages", "2")
    assert result.code == 0, result.err
    first, second = result.out.splitlines()
    assert first.endswith("  import  SUCCEEDED  7 ok 0 failed  rule all-dicom  "
                          "store local-dataset/dicomStores/local-store  batch b-ok  operation 11")
    assert second.endswith("  export  FAILED     0 ok 2 failed  store local-dataset/dicomStores/local-store  "
                           "request req-bad  operation -  error: 2 instances failed")

    started = time.monotonic()
    idle = cli("--env-file", str(scenario.env_file), "tail", "--subscription", scenario.subscription, "--timeout", "1")
    assert idle.code == 0 and idle.out == ""  # both were acknowledged
    assert time.monotonic() - started < 10


def test_a_running_tail_prints_json_and_stops_quietly_on_ctrl_c(scenario):
    process = subprocess.Popen(
        [sys.executable, "-m", "handlers", "--env-file", str(scenario.env_file), "tail", "--subscription",
         scenario.subscription, "--json"], cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = PipeLines(process.stdout), PipeLines(process.stderr)
    try:
        time.sleep(1.5)
        publish(scenario, IMPORT)
        line = stdout.readline(timeout=30)
        assert line, "tail printed no line within 30 s" if line is None else "tail ended without printing a line"
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        out, err = stdout.rest(timeout=5), stderr.rest(timeout=5)
    finally:
        process.kill()
        process.wait()
    assert json.loads(line)["data"] == IMPORT and json.loads(line)["attributes"] == {"outcome": "SUCCEEDED"}
    assert process.returncode == 0 and out == "" and err == ""


def test_a_missing_subscription_is_named(cli, scenario):
    name = scenario.subscription + "-gone"
    result = cli("--env-file", str(scenario.env_file), "tail", "--subscription", name, "--timeout", "5")
    assert result.code == 1
    assert result.err == f"error: subscription {name} does not exist: create it on the results topic, " \
                         "or pass --subscription\n"
