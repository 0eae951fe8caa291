"""Choosing each rule's import mode for a backfill: one call from the source, or through staging."""

import pytest

from handlers.cli.backfill_plan import SourceObject, make_plan
from handlers.config import parse
from tests.cli.conftest import CONFIG_ENV

CONFIG = """\
stores: {main: projects/p/locations/l/datasets/d/dicomStores/s}
rules:
  - name: ct
    match: gs://src/ct/**.dcm
    store: main
    ignore: [gs://src/ct/draft/**]
  - name: per-patient
    match: gs://src/*/scans/*.dcm
    store: main
  - name: all
    match: gs://src/**.dcm
    store: main
ignore: [gs://src/tmp/**]
state: {bucket: state-bkt}
results: {topic: projects/p/topics/results, object_names: NAMES}
followup: {topic: projects/p/topics/followups}
"""


def config(names="plain"):
    return parse(CONFIG.replace("NAMES", names), "c.yaml", CONFIG_ENV)


def listing(*names):
    return [SourceObject(name, "1") for name in names]


def test_a_rule_alone_under_a_folder_is_imported_in_one_call_of_its_narrowed_pattern():
    plan = make_plan(config(), "src", "ct/2024/", listing("ct/2024/a/1.dcm", "ct/2024/b/2.dcm", "ct/2024/notes.txt"))
    [group] = plan.groups
    assert group.rule.name == "ct" and [o.name for o in group.objects] == ["ct/2024/a/1.dcm", "ct/2024/b/2.dcm"]
    assert group.source.uri == "gs://src/ct/2024/**.dcm"
    assert plan.skipped == {"no rule matches": ["ct/2024/notes.txt"]}
    assert plan.listed == 3 and plan.objects == 2


def test_single_segment_wildcards_narrow_too():
    plan = make_plan(config(), "src", "p7/", listing("p7/scans/1.dcm", "p7/scans/2.dcm"))
    [group] = plan.groups
    assert group.rule.name == "per-patient" and group.source.uri == "gs://src/p7/scans/*.dcm"


@pytest.mark.parametrize("names, prefix, because", [
    # a global ignore pattern hides an object the narrowed pattern covers
    (("a/1.dcm", "tmp/x.dcm"), "", "gs://src/**.dcm also covers 1 listed object(s)"),
    # the rule's own ignore pattern does
    (("ct/1.dcm", "ct/draft/2.dcm"), "ct/", "gs://src/ct/**.dcm also covers 1 listed object(s)"),
    # an earlier rule takes some of what the narrowed pattern covers
    (("p1/scans/1.dcm", "p1/other/2.dcm"), "p1/", "gs://src/p1/**.dcm also covers 1 listed object(s)"),
    # the prefix is not a folder
    (("ct/a1.dcm", "ct/a2.dcm"), "ct/a", "the prefix is not a folder"),
])
def test_otherwise_the_rule_goes_through_staging_with_the_reason(names, prefix, because):
    plan = make_plan(config(), "src", prefix, listing(*names))
    staged = [group for group in plan.groups if group.source is None]
    assert staged and because in staged[-1].staged_because


def test_an_earlier_rule_with_its_own_objects_keeps_its_single_call():
    plan = make_plan(config(), "src", "", listing("ct/1.dcm", "ct/2.dcm", "x/3.dcm"))
    ct, everything = plan.groups
    assert ct.source.uri == "gs://src/ct/**.dcm"
    assert everything.rule.name == "all" and everything.source is None  # gs://src/**.dcm would re-import ct/


def test_rule_option_keeps_only_that_rules_objects():
    plan = make_plan(config(), "src", "", listing("ct/1.dcm", "x/3.dcm"), only=config().rule_named("all"))
    [group] = plan.groups
    assert [o.name for o in group.objects] == ["x/3.dcm"] and group.source is None
    assert plan.skipped == {"goes to rule 'ct', not --rule all": ["ct/1.dcm"]}


def test_hashed_names_keep_source_prefixes_out_of_messages_by_staging():
    plan = make_plan(config("hashed"), "src", "ct/", listing("ct/1.dcm"))
    assert plan.groups[0].source is None and "hashed" in plan.groups[0].staged_because


def test_the_one_call_batch_id_is_stable_and_follows_the_listing():
    first = make_plan(config(), "src", "ct/", listing("ct/1.dcm", "ct/2.dcm")).groups[0].exact_batch_id()
    again = make_plan(config(), "src", "ct/", listing("ct/2.dcm", "ct/1.dcm")).groups[0].exact_batch_id()
    grown = make_plan(config(), "src", "ct/", listing("ct/1.dcm", "ct/2.dcm", "ct/3.dcm")).groups[0].exact_batch_id()
    rewritten = make_plan(config(), "src", "ct/", [SourceObject("ct/1.dcm", "2"), SourceObject("ct/2.dcm", "1")])
    assert first == again and first.startswith("backfill-")
    assert grown != first and rewritten.groups[0].exact_batch_id() != first


def test_printed_plans_follow_the_name_policy_except_the_dry_run():
    from handlers.cli.backfill import render_dry_run, render_plan

    hashed = config("hashed")
    plan = make_plan(hashed, "src", "", listing("Doe^John/1.dcm", "tmp/Doe^John.dcm", "Doe^John.txt"))
    printed = render_plan(hashed, plan, hashed.names)
    assert "Doe^John" not in printed and printed.count("sha256:") == 2
    assert "gs://src/Doe^John/1.dcm" in render_dry_run(hashed, plan)
