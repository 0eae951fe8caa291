"""on_failure and on_conflict per rule: parsed, defaulted, and refused with FILE:LINE: problem and fix."""

import pytest

from handlers.config import KEEP, QUARANTINE, REPLACE, REPORT, TAG, ConfigError, FailurePolicy, parse

CONFIG = """\
stores: {main: projects/p/locations/l/datasets/d/dicomStores/s}
rules:
  - name: ct
    match: gs://inbox-bkt/ct/**.dcm
    store: main
POLICY
  - name: other
    match: gs://other-bkt/**.dcm
    store: main
state: {bucket: state-bkt}
results: {topic: projects/p/topics/results}
followup: {topic: projects/p/topics/followups}
"""


def rule(policy: str):
    return parse(CONFIG.replace("POLICY", policy), "config.yaml", {}).rules[0]


def problems(policy: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(CONFIG.replace("POLICY", policy), "config.yaml", {})
    return caught.value.problems


def test_defaults_report_and_keep():
    ct = rule("")
    assert (ct.on_failure, ct.on_conflict) == (FailurePolicy(REPORT), KEEP)


def test_tag_and_replace():
    ct = rule("    on_failure: tag\n    on_conflict: replace")
    assert (ct.on_failure.action, ct.on_conflict) == (TAG, REPLACE)


@pytest.mark.parametrize("text, bucket, prefix, move", [
    ("{quarantine: gs://quarantine-bkt/failed/, move: true}", "quarantine-bkt", "failed/", True),
    ("{quarantine: gs://quarantine-bkt/failed}", "quarantine-bkt", "failed/", False),
    ("{quarantine: gs://quarantine-bkt}", "quarantine-bkt", "", False),
])
def test_quarantine_destination_and_move(text, bucket, prefix, move):
    policy = rule(f"    on_failure: {text}").on_failure
    assert (policy.action, policy.bucket, policy.prefix, policy.move) == (QUARANTINE, bucket, prefix, move)
    assert policy.destination == f"gs://{bucket}/{prefix}"


@pytest.mark.parametrize("policy, expected", [
    ("    on_failure: delete", "config.yaml:6: rule 'ct' on_failure must be report, tag, or a mapping"),
    ("    on_failure: {move: true}", "config.yaml:6: rule 'ct' on_failure needs 'quarantine: gs://BUCKET/PREFIX/'"),
    ("    on_failure: {quarantine: gs://quarantine-bkt/x/, mvoe: true}",
     "config.yaml:6: unknown key 'mvoe' in rule 'ct' on_failure: did you mean 'move'?"),
    ("    on_failure: {quarantine: gs://quarantine-bkt/x/, move: 2}", "on_failure move must be true"),
    ("    on_failure: {quarantine: s3://quarantine-bkt/x/}", "is not a Cloud Storage URI"),
    ("    on_failure: {quarantine: gs://quarantine-bkt/x*/}", "has a wildcard"),
    ("    on_failure:\n      quarantine: gs://inbox-bkt/failed/",
     "config.yaml:7: rule 'ct' quarantines into gs://inbox-bkt, which rule 'ct' watches: the copies would be "
     "imported again (a loop)"),
    ("    on_failure: {quarantine: gs://other-bkt/failed/}", "which rule 'other' watches"),
    ("    on_failure: {quarantine: gs://state-bkt/failed/}", "quarantines into the state bucket gs://state-bkt"),
    ("    on_conflict: overwrite", "config.yaml:6: rule 'ct' on_conflict must be keep"),
])
def test_bad_policies_are_named_with_their_line_and_fix(policy, expected):
    assert any(expected in problem for problem in problems(policy)), problems(policy)
