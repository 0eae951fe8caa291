"""``explain``: the rule, store, batch key and import URI of one object, or why it is not imported."""

import json

import pytest

from tests.cli.conftest import CONFIG_ENV, write_config

RULES = """\
  - name: ct
    match: gs://inbox-bkt/ct/**.dcm
    store: main
    ignore: [gs://inbox-bkt/ct/scratch/**]
  - name: rest
    match: gs://inbox-bkt/*/*.dcm
    store: main
"""


@pytest.fixture
def config(tmp_path, config_env):
    return str(write_config(tmp_path / "c.yaml", RULES, ignore="[gs://inbox-bkt/tmp/**]"))


def explain_json(cli, config, uri):
    result = cli("--config", config, "explain", uri, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_a_matched_object_shows_rule_store_batch_key_and_staging_uri(cli, config):
    result = cli("--config", config, "explain", "gs://inbox-bkt/ct/p1/s2/img 1.dcm")
    assert result.code == 0 and result.err == ""
    lines = result.out.splitlines()
    assert lines[0] == "gs://inbox-bkt/ct/p1/s2/img 1.dcm"
    assert lines[1] == "  imported     yes, by rule ct (rule 1: gs://inbox-bkt/ct/**.dcm)"
    assert lines[2] == f"  store        main -> {CONFIG_ENV['DICOM_STORE']}"
    assert lines[3] == ("  batch key    rule ct: its objects share one open batch, sealed at 500 objects, "
                        "after 2 s without a new object, or 10 s after its first object")
    assert lines[4] == "  import URI   gs://state-bkt/staging/ct/BATCH/*"
    assert "BATCH is assigned when the object arrives" in lines[5]
    assert lines[6].startswith("  backfill     gs://inbox-bkt/ct/p1/s2/: gs://inbox-bkt/ct/p1/s2/**.dcm, one import call")


def test_json_is_one_object_with_the_same_facts(cli, config):
    found = explain_json(cli, config, "gs://inbox-bkt/mr/a.dcm")
    assert found["imported"] is True and found["batchKey"] == "rest"
    assert found["rule"] == {"name": "rest", "position": 2, "match": "gs://inbox-bkt/*/*.dcm", "ignore": [],
                             "blobStorageClass": None}
    assert found["store"] == CONFIG_ENV["DICOM_STORE"] and found["storeAlias"] == "main"
    assert found["importUri"] == "gs://state-bkt/staging/rest/BATCH/*"
    assert found["backfill"]["prefix"] == "gs://inbox-bkt/mr/"
    assert found["backfill"]["sourceUri"] == "gs://inbox-bkt/mr/*.dcm"


@pytest.mark.parametrize("uri, reason, ignored_by", [
    ("gs://inbox-bkt/tmp/ct/a.dcm", "ignored by gs://inbox-bkt/tmp/**", "gs://inbox-bkt/tmp/**"),
    ("gs://inbox-bkt/ct/scratch/a.dcm", "ignored by rule 'ct': gs://inbox-bkt/ct/scratch/**",
     "gs://inbox-bkt/ct/scratch/**"),
    ("gs://inbox-bkt/notes.txt", "no rule matches", None),
    ("gs://other-bkt/a.dcm", "bucket 'other-bkt' is not watched by any rule", None),
    ("gs://inbox-bkt/ct/", "folder placeholder object (name ends with '/')", None),
])
def test_objects_not_imported_say_why(cli, config, uri, reason, ignored_by):
    found = explain_json(cli, config, uri)
    assert found["imported"] is False and found["reason"] == reason and found["ignoredBy"] == ignored_by
    assert "rule" not in found and "importUri" not in found


def test_no_match_lists_the_rules_tried_and_an_unwatched_bucket_the_watched_ones(cli, config):
    text = cli("--config", config, "explain", "gs://inbox-bkt/notes.txt").out
    assert "  imported     no: no rule matches\n  rule tried   ct: gs://inbox-bkt/ct/**.dcm\n" \
           "  rule tried   rest: gs://inbox-bkt/*/*.dcm\n" in text
    assert "  watched      inbox-bkt\n" in cli("--config", config, "explain", "gs://other-bkt/a.dcm").out


def test_names_are_shown_even_when_hashed_but_backfill_goes_through_staging(cli, tmp_path, config_env):
    config = str(write_config(tmp_path / "h.yaml", RULES, names="hashed"))
    found = explain_json(cli, config, "gs://inbox-bkt/ct/Doe^John/a.dcm")
    assert found["object"] == "gs://inbox-bkt/ct/Doe^John/a.dcm"
    assert found["backfill"]["sourceUri"] is None and "hashed" in found["backfill"]["note"]


@pytest.mark.parametrize("uri, message", [
    ("inbox-bkt/a.dcm", "error: 'inbox-bkt/a.dcm' is not a Cloud Storage URI: write it as gs://BUCKET/"),
    ("gs://inbox-bkt", "error: 'gs://inbox-bkt' names no object"),
    ("gs://inbox-bkt/", "error: 'gs://inbox-bkt/' names no object: give the full object name"),
    ("gs://Inbox/a.dcm", "error: bucket 'Inbox' in 'gs://Inbox/a.dcm' is not a valid bucket name"),
])
def test_a_malformed_uri_is_one_line(cli, config, uri, message):
    result = cli("--config", config, "explain", uri)
    assert result.code == 1 and result.out == ""
    assert result.err.startswith(message) and result.err.count("\n") == 1
