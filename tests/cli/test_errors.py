"""Errors before any call: usage, environment files, unreachable emulators, bad URIs and requests. One line each."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import handlers.cli as cli_module
from handlers.cli.environment import load_env_file
from handlers.cli.errors import describe
from tests.cli.conftest import closed_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def one_line_error(result, code=1):
    assert result.code == code and result.out == ""
    assert result.err.count("\n") == 1 and "Traceback" not in result.err, result.err
    return result.err.rstrip("\n")


@pytest.mark.parametrize("argv, message", [
    ((), "python -m handlers: error: the following arguments are required: COMMAND (see python -m handlers --help)"),
    (("explode",), "python -m handlers: error: argument COMMAND: invalid choice: 'explode'"),
    (("tail", "--max-messages", "0"), "python -m handlers tail: error: argument --max-messages: must be at least 1"),
    (("--local", "--env-file", "x", "tail"), "error: argument --env-file: not allowed with argument --local"),
    (("--local", "tail", "--env-file", "x"), "error: argument --env-file: not allowed with argument --local"),
    (("export", "--to", "gs://b/d"), "python -m handlers export: error: the following arguments are required: --store"),
    (("export", "--store", "s", "--where", "StudyDate=20260101", "--page-size", "0"),
     "python -m handlers export: error: argument --page-size: must be at least 1"),
    (("failures", "--since", "soon"), "python -m handlers failures: error: argument --since: 'soon' is not a duration: "
                                      "write a number and s, m, h or d, e.g. 90m, 24h or 7d"),
    (("retry", "--failed-since", "1 week"), "error: argument --failed-since: '1 week' is not a duration"),
    (("retry",), "give a BATCH (python -m handlers failures lists them) or --failed-since DURATION (e.g. 24h)"),
    (("retry", "20261202T101010Z-0a1b2c3d", "--failed-since", "24h"), "give a BATCH or --failed-since DURATION, not both"),
    (("reconcile", "--since", "30d"), "error: argument --since: '30d': give more than 0 and at most 29d"),
])
def test_usage_errors_are_one_line_with_exit_2(cli, argv, message):
    assert message in one_line_error(cli(*argv), code=2)


def test_help_exits_0(cli):
    result = cli("backfill", "--help")
    assert result.code == 0 and "--dry-run" in result.out and "--no-wait" in result.out


def test_help_says_what_the_commands_do(cli):
    """backfill --dry-run lists the bucket (not "call nothing"); tail prints reconcile sweeps too."""
    backfill = " ".join(cli("backfill", "--help").out.split())
    assert "only the bucket is listed: nothing is written, published or imported" in backfill
    assert "call nothing" not in backfill
    tail = " ".join(cli("tail", "--help").out.split())
    assert "(imports, exports, reconcile sweeps)" in tail


def test_an_env_file_sets_the_environment_before_the_config_is_read(cli, tmp_path, config_env, monkeypatch):
    monkeypatch.delenv("INBOX_BUCKET")
    env = tmp_path / "stack.env"
    env.write_text("# the stack\nexport INBOX_BUCKET=from-file-bkt\nSTATE_BUCKET='quoted-bkt'\n\n")
    result = cli("check-config", "--env-file", str(env))  # global options also work after the command
    assert result.code == 0, result.err
    assert "match   gs://from-file-bkt/**.dcm" in result.out and "state bucket: gs://quoted-bkt" in result.out
    assert os.environ["INBOX_BUCKET"] == "from-file-bkt"


def test_an_env_file_comment_after_a_value_is_not_part_of_it(tmp_path):
    env = tmp_path / "stack.env"
    env.write_text("INBOX_BUCKET='inbox-b'   # the inbox\nSTATE_BUCKET=state-b #\tstate\nA=x#y\nB='x # y' # z\nC= # none\n")
    assert load_env_file(env) == {"INBOX_BUCKET": "inbox-b", "STATE_BUCKET": "state-b", "A": "x#y", "B": "x # y", "C": ""}


def test_env_file_problems_name_the_file(cli, tmp_path, config_env):
    assert one_line_error(cli("--env-file", str(tmp_path / "nope.env"), "check-config")) == \
        f"error: cannot read env file {tmp_path / 'nope.env'} (No such file or directory): check the path"
    bad = tmp_path / "bad.env"
    bad.write_text("A=1\nnot a pair\n")
    assert one_line_error(cli("--env-file", str(bad), "check-config")) == \
        f"error: {bad}:2: expected KEY=VALUE, got 'not a pair': fix or remove the line"
    latin1 = tmp_path / "latin1.env"
    latin1.write_bytes(b"A=1\nSITE=Z\xfcrich\n")
    assert one_line_error(cli("--env-file", str(latin1), "check-config")) == \
        f"error: {latin1}:2: not UTF-8 text (byte 11 is 0xfc): save the env file as UTF-8"


def test_local_without_a_running_stack_says_make_up(cli, tmp_path, monkeypatch, config_env):
    monkeypatch.setattr(cli_module, "LOCAL_ENV_FILE", tmp_path / ".local" / "stack.env")
    assert one_line_error(cli("--local", "tail")) == \
        f"error: cannot read {tmp_path / '.local' / 'stack.env'}: the local stack is not up: run make up"


@pytest.fixture
def stopped_stack(tmp_path, config_env):
    """An env file naming emulators on ports where nothing listens."""
    ports = {key: closed_port() for key in ("gcs", "pubsub", "hc")}
    env = tmp_path / "stopped.env"
    env.write_text(f"STORAGE_EMULATOR_HOST=http://127.0.0.1:{ports['gcs']}\nPUBSUB_EMULATOR_HOST=127.0.0.1:{ports['pubsub']}\n"
                   f"HEALTHCARE_EMULATOR_HOST=http://127.0.0.1:{ports['hc']}\n"
                   "RESULTS_SUBSCRIPTION=projects/p/subscriptions/tail\nEXPORT_BUCKET=out-bkt\n")
    return str(env), ports


@pytest.mark.parametrize("argv, service, key, port", [
    (("backfill", "gs://inbox-bkt/x/"), "Cloud Storage", "STORAGE_EMULATOR_HOST", "gcs"),
    (("backfill", "gs://inbox-bkt/x/", "--dry-run"), "Cloud Storage", "STORAGE_EMULATOR_HOST", "gcs"),
    (("tail",), "Pub/Sub", "PUBSUB_EMULATOR_HOST", "pubsub"),
    (("export", "--store", "main", "--to", "gs://out-bkt/d"), "Cloud Storage", "STORAGE_EMULATOR_HOST", "gcs"),
])
def test_a_stopped_emulator_is_named_with_the_fix(cli, stopped_stack, argv, service, key, port):
    env, ports = stopped_stack
    address = f"127.0.0.1:{ports[port]}" if key == "PUBSUB_EMULATOR_HOST" else f"http://127.0.0.1:{ports[port]}"
    assert one_line_error(cli("--env-file", env, *argv)) == \
        f"error: cannot reach {service} at {address} ({key}): is the local stack up? run make up"


@pytest.mark.parametrize("argv, message", [
    (("backfill", "s3://inbox-bkt/x/"), "error: 's3://inbox-bkt/x/' is not a Cloud Storage URI"),
    (("backfill", "gs://inbox-bkt/*/x/"), "error: 'gs://inbox-bkt/*/x/' has a wildcard: backfill takes a prefix"),
    (("backfill", "gs://other-bkt/"), "error: bucket other-bkt is not watched by any rule of "),
    (("backfill", "gs://inbox-bkt/", "--rule", "nope"), "error: rule 'nope' is not in "),
    (("export", "--store", "nope", "--to", "gs://out-bkt/d"),
     "error: store 'nope' is not one of the stores in config.yaml (known: main ("),
    (("export", "--store", "main", "--to", "gs://elsewhere/d"),
     "error: destination gs://elsewhere/d is outside exports.destinations (gs://out-bkt/)"),
    (("export", "--store", "main", "--to", "gs://out-bkt/d", "--level", "series"),
     "error: --level and --page-size apply to --where: add --where QUERY, or drop them"),
    (("export", "--store", "main", "--to", "gs://out-bkt/d", "--where", "Modality=CT", "--study", "1.2"),
     "error: a query selects the UIDs itself: give either a query or studies"),
    (("export", "--store", "main", "--to", "gs://out-bkt/d", "--where", "StudyDate=2026-01-01"),
     "error: StudyDate='2026-01-01' is not a YYYYMMDD value or range"),
    (("export", "--store", "main", "--to", "gs://out-bkt/d", "--study", "1.2.x"),
     "error: study UID '1.2.x' is not a DICOM UID"),
    (("export", "--store", "main", "--to", "gs://out-bkt/d", "--series", "1.2"),
     "error: --series '1.2' must be STUDY_UID/SERIES_UID"),
    (("export", "--store", "main", "--to", "out-bkt/d"), "error: destination: 'out-bkt/d' is not a Cloud Storage URI"),
    (("export", "--store", "main", "--to", "gs://out-bkt/d", "--mime-type", "text/plain"),
     "error: MIME type 'text/plain' is not one the API exports"),
])
def test_bad_arguments_are_refused_before_any_call(cli, stopped_stack, argv, message):
    # The emulators are stopped: any call would fail with "cannot reach" instead of these messages.
    env, _ = stopped_stack
    assert one_line_error(cli("--env-file", env, *argv)).startswith(message)


def test_filter_file_problems_are_refused_before_any_call(cli, stopped_stack, tmp_path):
    env, _ = stopped_stack
    export = ("--env-file", env, "export", "--store", "main", "--to", "gs://out-bkt/d", "--filter-file")
    bad = tmp_path / "filter.txt"
    bad.write_text("/studies/1.2\n/studies/1.2/series/x\n")
    assert one_line_error(cli(*export, str(bad))) == f"error: {bad}:2: series UID 'x' is not a DICOM UID: " \
                                                     "digits separated by dots, at most 64 characters"
    assert one_line_error(cli(*export, str(tmp_path / "none.txt"))) == \
        f"error: cannot read filter file {tmp_path / 'none.txt'} (No such file or directory): check the path"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert "has no path: an empty filter would export the whole store" in one_line_error(cli(*export, str(empty)))


def test_tail_needs_a_subscription(cli, config_env):
    assert one_line_error(cli("tail")) == (
        "error: no subscription: pass --subscription NAME, or set RESULTS_SUBSCRIPTION (--local sets it; in production "
        "the operators' subscription deploy.sh creates, dicom-import-results-ops by default)")


def test_an_unexpected_exception_is_one_line_without_traceback(cli, config_env, monkeypatch):
    from handlers.cli import check_config

    def broken(ctx, args):
        raise KeyError("surprise")

    monkeypatch.setattr(check_config, "render", lambda config: broken(None, None))
    assert one_line_error(cli("check-config")) == "error: unexpected error: KeyError: 'surprise'"


def test_missing_credentials_and_api_errors_read_as_fixes():
    from google.api_core import exceptions
    from google.auth.exceptions import DefaultCredentialsError

    from handlers.clients.healthcare import ApiError

    assert "gcloud auth application-default login" in describe(DefaultCredentialsError("none"))
    assert describe(exceptions.Forbidden("no access")).startswith("permission denied: no access: grant")
    assert describe(ApiError(404, "NOT_FOUND", "no store")) == \
        "the Cloud Healthcare API answered 404 NOT_FOUND: no store: check the store name"


@pytest.mark.parametrize("argv", [("check-config",), ("explain", "gs://inbox-bkt/a/b.dcm", "--json")])
def test_a_reader_gone_from_stdout_stops_quietly(config_env, argv):
    """``python -m handlers ... | head -0``: no "unexpected error", no traceback; 141 as a shell tool SIGPIPE ended."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "handlers", *argv], stdout=write_end, stderr=subprocess.PIPE,
                                cwd=REPO_ROOT, env=os.environ, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr.decode()) == (141, "")
