"""``check-config``: valid files are shown as the function reads them; invalid ones as PATH:LINE problems."""

from pathlib import Path

import pytest

from tests.cli.conftest import CONFIG_ENV, write_config

REPO_CONFIG = str(Path(__file__).resolve().parents[2] / "config.yaml")


def test_the_default_config_is_shown_with_full_store_names_and_ignores(cli, config_env):
    result = cli("check-config")
    assert result.code == 0 and result.err == ""
    assert result.out.startswith(f"{REPO_CONFIG}: valid\n")
    assert f"  1. all-dicom\n       match   gs://inbox-bkt/**.dcm\n       store   main -> {CONFIG_ENV['DICOM_STORE']}\n" \
        in result.out
    assert "ignored by every rule:\n  gs://inbox-bkt/tmp/**\n" in result.out
    assert "sealed at 500 objects, after 2 s without a new object, or 10 s after its first object" in result.out
    assert "results topic: projects/p/topics/results (object names: plain)" in result.out
    assert "follow-up topic: projects/p/topics/followups" in result.out
    assert "state bucket: gs://state-bkt" in result.out


def test_rules_keep_their_order_with_rule_ignores_and_storage_class(cli, config_env, tmp_path):
    path = write_config(tmp_path / "c.yaml", """\
  - name: ct
    match: gs://inbox-bkt/ct/**.dcm
    store: main
    ignore: [gs://inbox-bkt/ct/scratch/**]
    blob_storage_class: NEARLINE
  - name: rest
    match: gs://inbox-bkt/**.dcm
    store: main
""")
    result = cli("--config", str(path), "check-config")
    assert result.code == 0
    assert result.out.index("1. ct") < result.out.index("2. rest")
    assert "       ignore  gs://inbox-bkt/ct/scratch/**\n       blob storage class  NEARLINE\n" in result.out
    assert "ignored by every rule:\n  (nothing)\n" in result.out


def test_a_positional_path_wins_over_config(cli, config_env, tmp_path):
    path = write_config(tmp_path / "other.yaml", "  - {name: only, match: gs://other-bkt/*.dcm, store: main}\n")
    result = cli("--config", REPO_CONFIG, "check-config", str(path))
    assert result.code == 0 and "1. only" in result.out and "all-dicom" not in result.out


def test_every_problem_is_reported_as_path_line_message(cli, config_env, tmp_path):
    path = write_config(tmp_path / "bad.yaml", """\
  - name: Bad Name
    match: gs://inbox-bkt/**.dcm
    store: main
  - name: ok
    match: gs://inbox-bkt/a**/b.dcm
    store: nowhere
""")
    result = cli("check-config", str(path))
    assert result.code == 1 and result.out == ""
    lines = result.err.splitlines()
    assert lines[0].startswith(f"{path}:4: rule name 'Bad Name' must be")
    assert any(line.startswith(f"{path}:8: rule 'ok' match:") and "'**' must be at the end" in line for line in lines)
    assert any(line.startswith(f"{path}:9: rule 'ok' names store 'nowhere'") for line in lines)
    assert "Traceback" not in result.err


def test_an_unreadable_config_is_one_line(cli, config_env, tmp_path):
    result = cli("check-config", str(tmp_path / "missing.yaml"))
    assert result.code == 1
    assert result.err == f"{tmp_path / 'missing.yaml'}:0: cannot read the config file (No such file or directory): check the path\n"


def test_a_config_not_in_utf8_is_one_line_naming_the_line_and_byte(cli, config_env, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("stores:\n  main: x  # Müller\n".encode("latin-1"))
    result = cli("check-config", str(path))
    assert result.code == 1
    assert result.err == f"{path}:2: not UTF-8 text (byte 23 is 0xfc): save the config file as UTF-8\n"


def test_a_missing_environment_variable_names_the_fix(cli, config_env, monkeypatch):
    monkeypatch.delenv("INBOX_BUCKET")
    result = cli("check-config")
    assert result.code == 1
    assert "uses ${INBOX_BUCKET} but the environment does not set it" in result.err
    assert result.err.endswith("hint: add --local to read .local/stack.env (the local stack), or export the variables\n")


# ---------------------------------------------------------------- --kms-key: the key must fit the buckets

EU_KEY = "projects/keys-1/locations/europe/keyRings/imaging/cryptoKeys/dicom"


def test_a_key_is_checked_against_the_location_of_every_bucket_it_would_encrypt():
    from handlers.cli import kms

    locations = {"inbox-bkt": "EU", "state-bkt": "EU", "nam-bkt": "NAM4", "iowa-bkt": "US-CENTRAL1"}
    assert kms.problems(EU_KEY, ["inbox-bkt", "state-bkt"], locations.get) == []
    assert kms.problems("projects/k/locations/nam4/keyRings/r/cryptoKeys/k", ["nam-bkt"], locations.get) == []
    assert kms.problems("projects/k/locations/us-central1/keyRings/r/cryptoKeys/k", ["iowa-bkt"], locations.get) == []
    [problem] = kms.problems("projects/k/locations/europe-west4/keyRings/r/cryptoKeys/k", ["inbox-bkt"], locations.get)
    assert problem.startswith("--kms-key is in europe-west4, gs://inbox-bkt in EU") and "use a key in europe" in problem
    [missing] = kms.problems(EU_KEY, ["gone-bkt"], locations.get)
    assert "gs://gone-bkt does not exist" in missing


def test_check_config_refuses_a_key_in_another_location_than_the_buckets(cli, config_env, monkeypatch):
    from handlers.cli import kms

    asked = []
    monkeypatch.setattr(kms, "bucket_location", lambda bucket: asked.append(bucket) or {"state-bkt": "EU"}.get(bucket, "US"))
    result = cli("check-config", "--kms-key", EU_KEY)
    assert result.code == 1 and result.out == ""
    assert result.err == ("error: --kms-key is in europe, gs://inbox-bkt in US: Cloud Storage encrypts a bucket only "
                          "with a key in its own location: use a key in us\n")
    assert sorted(asked) == ["inbox-bkt", "state-bkt"]  # the watched buckets and the state bucket

    monkeypatch.setattr(kms, "bucket_location", lambda bucket: "EU")
    monkeypatch.setenv("KMS_KEY", EU_KEY)  # as deploy.sh reads it
    result = cli("check-config")
    assert result.code == 0
    assert result.out.endswith(f"encryption key: {EU_KEY} fits gs://inbox-bkt, gs://state-bkt\n")


def test_a_malformed_key_is_a_usage_error_before_any_call(cli, config_env, monkeypatch):
    from handlers.cli import kms

    monkeypatch.setattr(kms, "bucket_location", lambda bucket: pytest.fail("no call expected"))
    result = cli("check-config", "--kms-key", "projects/k/keyRings/r/cryptoKeys/k")
    assert result.code == 2 and "is not a key name" in result.err


def test_without_a_key_check_config_asks_no_bucket(cli, config_env, monkeypatch):
    from handlers.cli import kms

    monkeypatch.delenv("KMS_KEY", raising=False)
    monkeypatch.setattr(kms, "bucket_location", lambda bucket: pytest.fail("no call expected"))
    result = cli("check-config")
    assert result.code == 0 and "encryption key" not in result.out
