"""config.yaml: interpolation, validation with PATH:LINE messages, routing."""

import textwrap

import pytest

from handlers import config as config_module
from handlers.config import ConfigError, parse
from tests.unit.config_env import CONFIG_ENV as ENV


VALID = """\
stores:
  main: ${DICOM_STORE}
  archive: projects/p/locations/l/datasets/d/dicomStores/archive
rules:
  - name: urgent
    match: gs://${INBOX_BUCKET}/urgent/*.dcm
    store: main
    ignore:
      - gs://${INBOX_BUCKET}/urgent/draft-*.dcm
  - name: archive
    match: gs://${INBOX_BUCKET}/**.dcm
    store: archive
    blob_storage_class: COLDLINE
ignore:
  - gs://${INBOX_BUCKET}/tmp/**
batching:
  max_objects: 100
  max_wait_seconds: 5
state:
  bucket: ${STATE_BUCKET}
results:
  topic: ${RESULTS_TOPIC}
  object_names: hashed
followup:
  topic: ${FOLLOWUP_TOPIC}
"""


def problems(text: str, env=ENV) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(textwrap.dedent(text), "config.yaml", env)
    return caught.value.problems


def test_valid_config_is_interpolated_and_typed():
    cfg = parse(VALID, "config.yaml", ENV)
    assert [rule.name for rule in cfg.rules] == ["urgent", "archive"]
    assert cfg.rules[0].store == ENV["DICOM_STORE"]
    assert cfg.rules[1].pattern.uri == "gs://inbox-bkt/**.dcm"
    assert cfg.rules[1].blob_storage_class == "COLDLINE"
    assert cfg.batching.max_objects == 100 and cfg.batching.max_wait_seconds == 5.0
    assert cfg.state_bucket == "state-bkt"
    assert cfg.names.hashed
    assert cfg.followup_deadline_hours == 12.0
    assert cfg.buckets == {"inbox-bkt"}


@pytest.mark.parametrize(
    "bucket, name, rule, reason",
    [
        ("inbox-bkt", "urgent/a.dcm", "urgent", ""),
        ("inbox-bkt", "urgent/draft-1.dcm", None, "ignored by rule 'urgent'"),
        ("inbox-bkt", "urgent/deeper/a.dcm", "archive", ""),
        ("inbox-bkt", "tmp/x.dcm", None, "ignored by gs://inbox-bkt/tmp/**"),
        ("inbox-bkt", "notes.txt", None, "no rule matches"),
        ("inbox-bkt", "study/", None, "folder placeholder"),
        ("elsewhere", "a.dcm", None, "not watched"),
    ],
)
def test_route(bucket, name, rule, reason):
    route = parse(VALID, "config.yaml", ENV).route(bucket, name)
    assert (route.rule.name if route.rule else None) == rule
    assert reason in route.reason


def test_default_value_when_environment_lacks_the_variable():
    text = VALID.replace("${STATE_BUCKET}", "${STATE_BUCKET:-fallback-state}")
    env = {k: v for k, v in ENV.items() if k != "STATE_BUCKET"}
    assert parse(text, "config.yaml", env).state_bucket == "fallback-state"


def test_missing_environment_variable_names_it_and_the_line():
    env = {k: v for k, v in ENV.items() if k != "INBOX_BUCKET"}
    found = problems(VALID, env)
    assert found[0].startswith("config.yaml:6: ")
    assert "${INBOX_BUCKET}" in found[0] and "export it" in found[0]


def test_invalid_pattern_reports_its_line_and_the_api_rule():
    found = problems(VALID.replace("gs://${INBOX_BUCKET}/**.dcm", "gs://${INBOX_BUCKET}/**/x.dcm"))
    assert len(found) == 1
    assert found[0].startswith("config.yaml:11: rule 'archive' match")
    assert "must be at the end of the path" in found[0]


def test_unknown_store_lists_known_aliases():
    found = problems(VALID.replace("store: archive", "store: archiv"))
    assert found == ["config.yaml:12: rule 'archive' names store 'archiv', which 'stores' does not define (known: archive, main)"]


def test_bad_values_are_all_reported_at_once():
    text = VALID.replace("max_objects: 100", "max_objects: 0").replace("object_names: hashed", "object_names: secret")
    text = text.replace("bukcet", "x").replace("  max_wait_seconds: 5", "  max_wait_seconds: soon")
    found = problems(text)
    assert any(p.startswith("config.yaml:17: max_objects must be between 1 and 100000") for p in found)
    assert any(p.startswith("config.yaml:18: max_wait_seconds must be a number") for p in found)
    assert any(p.startswith("config.yaml:23: object_names must be one of plain, hashed") for p in found)


def test_unknown_keys_get_a_suggestion():
    found = problems(VALID.replace("  max_objects: 100", "  max_object: 100"))
    assert found == ["config.yaml:17: unknown key 'max_object' in batching: did you mean 'max_objects'?"]


def test_state_bucket_must_not_be_watched():
    found = problems(VALID, {**ENV, "STATE_BUCKET": "inbox-bkt"})
    assert any("also watched by rule 'urgent'" in p for p in found)


def test_store_and_topic_names_must_be_full():
    found = problems(VALID, {**ENV, "DICOM_STORE": "my-store", "RESULTS_TOPIC": "results"})
    assert any(p.startswith("config.yaml:2: store 'main' is 'my-store'") for p in found)
    assert any(p.startswith("config.yaml:22: results topic 'results' must be a full topic name") for p in found)


def test_duplicate_rule_names_and_bad_names():
    text = VALID.replace("name: archive", "name: urgent")
    assert any("used twice" in p for p in problems(text))
    assert any("must be 1-63 lowercase" in p for p in problems(VALID.replace("name: archive", "name: Archive!")))


def test_yaml_syntax_error_has_a_line():
    found = problems("stores:\n  main: [unclosed\nrules: []\n")
    assert found[0].startswith("config.yaml:3: not valid YAML")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A second rules: block would replace the first: the inbox it watched would go silent.
        (VALID + "rules: []\n", "config.yaml:26: not valid YAML (duplicate key 'rules' (first at line 4))"),
        (VALID.replace("  archive:", "  main:"), "config.yaml:3: not valid YAML (duplicate key 'main' (first at line 2))"),
        (VALID.replace("    store: main\n", "    store: main\n    match: gs://x-bkt/**\n", 1),
         "config.yaml:8: not valid YAML (duplicate key 'match' (first at line 6))"),
    ],
)
def test_a_key_written_twice_is_refused(text, expected):
    assert problems(text)[0].startswith(expected)


def test_a_list_as_a_key_is_refused_not_a_crash(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(VALID + "? [a, b]\n: 1\n")
    with pytest.raises(ConfigError) as caught:
        config_module.load(path, ENV)
    assert caught.value.problems == [
        f"{path}:26: not valid YAML (a key must be a plain value, not a list or mapping): fix the indentation or quoting"
    ]


def test_a_rule_matching_only_folder_placeholders_is_refused():
    found = problems(VALID.replace("gs://${INBOX_BUCKET}/**.dcm", "gs://${INBOX_BUCKET}/scans/"))
    assert found == ["config.yaml:11: rule 'archive' match gs://inbox-bkt/scans/ matches only folder placeholders, "
                     "which are never imported: did you mean gs://inbox-bkt/scans/**?"]


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        config_module.load(tmp_path / "missing.yaml", ENV)
    assert "cannot read the config file" in str(caught.value)


def test_repository_config_is_valid_with_the_local_stack_environment(monkeypatch):
    monkeypatch.delenv("DICOM_IMPORT_CONFIG", raising=False)  # `python -m localstack env` may point elsewhere
    cfg = config_module.load(config_module.default_path(), ENV)
    assert cfg.rules[0].pattern.uri == "gs://inbox-bkt/**.dcm"
    assert cfg.batching.max_wait_seconds <= 10


def test_followup_deadline_must_end_before_the_dead_letter_limit():
    found = problems(VALID.replace("  topic: ${FOLLOWUP_TOPIC}\n", "  topic: ${FOLLOWUP_TOPIC}\n  deadline_hours: 24\n"))
    assert found == ["config.yaml:26: deadline_hours must be between 0.01 and 15, got 24"]


def test_seal_after_quiet_defaults_to_two_seconds_and_zero_turns_it_off():
    assert parse(VALID, "config.yaml", ENV).batching.seal_after_quiet_seconds == 2.0
    text = VALID.replace("  max_wait_seconds: 5\n", "  max_wait_seconds: 5\n  seal_after_quiet_seconds: 0\n")
    assert parse(text, "config.yaml", ENV).batching.seal_after_quiet_seconds == 0.0


@pytest.mark.parametrize("value, message", [
    ("0.1", "config.yaml:19: seal_after_quiet_seconds must be 0 (off) or at least 0.5"),
    ("5", "config.yaml:19: seal_after_quiet_seconds (5) must be shorter than max_wait_seconds (5)"),
    ("-1", "config.yaml:19: seal_after_quiet_seconds must be between 0 and 300, got -1"),
    ("soon", "config.yaml:19: seal_after_quiet_seconds must be a number"),
])
def test_seal_after_quiet_out_of_range_names_the_line(value, message):
    text = VALID.replace("  max_wait_seconds: 5\n", f"  max_wait_seconds: 5\n  seal_after_quiet_seconds: {value}\n")
    [found] = problems(text)
    assert found.startswith(message), found
