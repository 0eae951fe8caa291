"""monitoring/: log-based metrics, the dashboard and the alert policies that deploy.sh creates.

Nothing here reaches Google. The files are judged three ways:
* by the API's own message classes in the installed Cloud SDK (every field and enum
  value must be one the API defines: tests/google_sdk.py);
* by the rules the API reference states for each field (required fields, metric kinds,
  alignment periods, durations, filter lengths, conditions that must stand alone...);
* against the function itself: every log filter selects messages that handlers/ logs,
  and reads only fields those log lines carry; every chart and condition names a metric
  defined in monitoring/metrics (or a Pub/Sub metric), with labels that metric has.
"""

from __future__ import annotations

import ast
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from handlers import log
from handlers.batch.reporting import Reporter, published_fields
from handlers.batch.results import import_message
from handlers.clients.storage import Document
from handlers.privacy import NamePolicy
from tests import google_sdk
from tests.fakes import FakeClock, FakePublisher, MemoryStateStore

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
USER_METRIC = "logging.googleapis.com/user/"
# What deploy.sh puts in place of the placeholders (monitoring_json), for the default topic names.
PLACEHOLDERS = {"{{PROJECT}}": "dicom-prod-1", "{{FOLLOWUP_DEAD_LETTER}}": "dicom-import-followups-dead-letter",
                "{{RESULTS_DEAD_LETTER}}": "dicom-import-results-dead-letter"}
# Google's own metrics the files may use: kind, value type, monitored resource, labels.
BUILTIN_METRICS = {
    "pubsub.googleapis.com/subscription/num_undelivered_messages": ("GAUGE", "INT64", "pubsub_subscription", set()),
}
RUN_RESOURCE = "cloud_run_revision"  # Cloud Run functions (2nd gen) write their logs as Cloud Run revisions


def rendered(path: Path) -> dict:
    text = path.read_text()
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    assert "{{" not in text, f"{path.name}: a placeholder deploy.sh does not fill"
    return json.loads(text)


METRICS = {path.stem: json.loads(path.read_text()) for path in sorted((MONITORING / "metrics").glob("*.json"))}
ALERTS = {path.stem: rendered(path) for path in sorted((MONITORING / "alerts").glob("*.json"))}
DASHBOARD = rendered(MONITORING / "dashboard.json")


def user_metric(metric_type: str) -> dict | None:
    return METRICS.get(metric_type.removeprefix(USER_METRIC)) if metric_type.startswith(USER_METRIC) else None


def metric_facts(metric_type: str) -> tuple[str, str, str, set[str]]:
    """(kind, value type, monitored resource, label keys) of a metric the files may name."""
    metric = user_metric(metric_type)
    if metric is not None:
        descriptor = metric["metricDescriptor"]
        return (descriptor["metricKind"], descriptor["valueType"], RUN_RESOURCE,
                {label["key"] for label in descriptor.get("labels", [])})
    assert metric_type in BUILTIN_METRICS, f"{metric_type} is neither in monitoring/metrics nor a known Google metric"
    return BUILTIN_METRICS[metric_type]


# ---------------------------------------------------------------- what the function logs


def _deploy_constant(name: str) -> str:
    match = re.search(rf"^readonly {name}=(\S+)$", (REPO / "deploy.sh").read_text(), re.M)
    assert match, name
    return match.group(1)


FUNCTIONS = {_deploy_constant(name) for name in ("FN_INTAKE", "FN_FOLLOWUP", "FN_EXPORT", "FN_RECONCILE")}


def _expanded_fields(node: ast.expr) -> set[str]:
    """Keys of a ``**mapping`` passed to a log call; only helpers known here can be expanded."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "published_fields":
        return set(published_fields({}, {}))
    raise AssertionError(f"a log call expands **{ast.unparse(node)}: teach tests/unit/test_monitoring.py its keys")


def logged_messages() -> dict[str, set[str]]:
    """Every constant message handlers/ logs through handlers.log, with the JSON fields its line carries."""
    catalog: dict[str, set[str]] = defaultdict(set)
    for path in sorted((REPO / "handlers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "log"
                    and node.func.attr in ("info", "warning", "error")):
                continue
            if not (node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                continue
            fields = catalog[node.args[0].value]
            for keyword in node.keywords:
                fields |= {keyword.arg} if keyword.arg else _expanded_fields(keyword.value)
    return catalog


LOGGED = logged_messages()
PAYLOAD_FIELD = re.compile(r"jsonPayload\.([A-Za-z_][A-Za-z0-9_]*)")
MESSAGE_CLAUSE = re.compile(r'jsonPayload\.message\s*=\s*(\("[^"]*"(?:\s+OR\s+"[^"]*")*\)|"[^"]*")')


def log_filters() -> list[tuple[str, str, dict[str, str]]]:
    """(where, filter, extractors) of every Logging query in the files: metrics and log-match conditions."""
    found = []
    for name, metric in METRICS.items():
        extractors = dict(metric.get("labelExtractors", {}))
        if "valueExtractor" in metric:
            extractors["(value)"] = metric["valueExtractor"]
        found.append((f"metrics/{name}", metric["filter"], extractors))
    for name, policy in ALERTS.items():
        for condition in policy["conditions"]:
            if "conditionMatchedLog" in condition:
                match = condition["conditionMatchedLog"]
                found.append((f"alerts/{name}", match["filter"], match.get("labelExtractors", {})))
    return found


def test_the_log_catalog_sees_the_function_s_log_lines():
    """The catalog the filter tests rely on is real: known lines are in it, with their fields."""
    assert {"schema", "outcome", "rule", "success", "failure", "objects", "totalSeconds", "conflicts",
            "record"} <= LOGGED["result published"]
    assert {"verdict", "rule"} <= LOGGED["object admitted"]
    assert "entry" in LOGGED["event will be retried"]


def test_objects_admitted_counts_every_line_that_admits_an_object():
    """Objects a reconcile sweep admits (the lost-events case) count too: the silence alert's "objects arrive"."""
    admitting = {message for message in LOGGED if message.startswith("object admitted")}
    [clause] = MESSAGE_CLAUSE.findall(METRICS["dicom_import_objects_admitted"]["filter"])
    assert set(re.findall(r'"([^"]*)"', clause)) == admitting == {"object admitted", "object admitted by reconcile"}


@pytest.mark.parametrize("where,filter_,extractors", log_filters(), ids=[f[0] for f in log_filters()])
def test_log_filters_select_lines_the_function_writes_and_read_fields_they_carry(where, filter_, extractors):
    clauses = MESSAGE_CLAUSE.findall(filter_)
    assert len(clauses) == 1, f"{where}: select the log line by jsonPayload.message, once"
    messages = re.findall(r'"([^"]*)"', clauses[0])
    unknown = [m for m in messages if m not in LOGGED]
    assert not unknown, f"{where}: no log call in handlers/ writes {unknown}"
    read = set(PAYLOAD_FIELD.findall(filter_)) | {field for e in extractors.values() for field in PAYLOAD_FIELD.findall(e)}
    read.discard("message")
    for message in messages:
        missing = read - LOGGED[message]
        assert not missing, f"{where}: the {message!r} log line has no field {sorted(missing)}"
    # Only the deployed functions' logs, as Cloud Run revisions.
    assert f'resource.type="{RUN_RESOURCE}"' in filter_
    services = re.search(r"resource\.labels\.service_name=\(([^)]*)\)", filter_)
    assert services and set(re.findall(r'"([^"]+)"', services.group(1))) == FUNCTIONS, where


def test_result_published_line_carries_counts_rule_latency_and_conflicts_but_no_object_name():
    store, publisher, clock = MemoryStateStore(), FakePublisher(), FakeClock()
    reporter = Reporter(store, publisher, "projects/p/topics/results", clock=clock)
    batch = {"batch": "20261125T100000Z-0a1b2c3d", "rule": "ct", "store": "projects/p/locations/l/datasets/d/dicomStores/s",
             "openedAt": clock() - 12.5, "sealedAt": clock() - 2.5, "importUri": "gs://state-bkt/staging/ct/b/*",
             "members": [{"id": str(n) * 32, "bucket": "inbox-bkt", "name": f"PATIENT-NAME/{n}.dcm", "generation": "7"}
                         for n in (1, 2)]}
    result, attributes = import_message(batch, outcome="REJECTED", names=NamePolicy(), manifest_uri="gs://state-bkt/m.json",
                                        error={"code": 403, "status": "PERMISSION_DENIED", "message": "no"},
                                        concluded_at=clock())
    path = "batches/ct/b.json"
    generation = store.create(path, {"state": "importing"})
    record = reporter.conclude(Document({"state": "importing"}, generation), path, result,
                               {**attributes, "conflictCount": "2"}, "w1")

    lines: list[str] = []
    log.redirect(type("Lines", (), {"write": lambda self, text: lines.append(text), "flush": lambda self: None})())
    try:
        reporter.publish(record, path, "w1")
    finally:
        log.redirect(None)
    [line] = [json.loads(text) for text in lines if text.strip()]
    assert line["message"] == "result published"
    assert {key: line[key] for key in ("schema", "outcome", "rule", "success", "failure", "objects", "totalSeconds",
                                       "conflicts", "record")} == {
        "schema": "dicom-import-result/v1", "outcome": "REJECTED", "rule": "ct", "success": 0, "failure": 2,
        "objects": 2, "totalSeconds": 12.5, "conflicts": 2, "record": path}
    assert "PATIENT-NAME" not in json.dumps(line)


def test_published_fields_leave_out_what_a_result_does_not_have():
    export = {"schema": "dicom-export-result/v1", "outcome": "SUCCEEDED", "counter": {"success": 3, "failure": 0},
              "timings": {"requestedAt": None}}
    fields = {key: value for key, value in published_fields(export, {"outcome": "SUCCEEDED"}).items()
              if value is not None}
    assert fields == {"schema": "dicom-export-result/v1", "outcome": "SUCCEEDED", "success": 3, "failure": 0}
    assert published_fields(export, {"conflictCount": "x"})["conflicts"] is None


# ---------------------------------------------------------------- log-based metrics

EXTRACTOR = re.compile(r'^(EXTRACT\(jsonPayload\.\w+\)|REGEXP_EXTRACT\(jsonPayload\.\w+, "(?P<re>[^"]*)"\))$')


@pytest.mark.parametrize("name", sorted(METRICS))
def test_log_based_metric_follows_the_logmetric_rules(name):
    metric = METRICS[name]
    assert re.fullmatch(r"[A-Za-z0-9_\-.,+!*'()%]{1,100}", name) and "name" not in metric  # deploy.sh names it
    assert metric["filter"] and len(metric["filter"]) <= 20000 and metric["description"]
    descriptor = metric["metricDescriptor"]
    assert descriptor["metricKind"] == "DELTA"
    labels = {label["key"] for label in descriptor.get("labels", [])}
    assert labels == set(metric.get("labelExtractors", {})), "each label needs an extractor, and only those"
    for expression in [*metric.get("labelExtractors", {}).values(), metric.get("valueExtractor", "EXTRACT(jsonPayload.x)")]:
        match = EXTRACTOR.match(expression)
        assert match, f"{name}: {expression!r} is not EXTRACT(field) or REGEXP_EXTRACT(field, regex)"
        if match.group("re") is not None:
            assert re.compile(match.group("re")).groups == 1, "REGEXP_EXTRACT needs exactly one capture group"
    if descriptor["valueType"] == "INT64":
        assert "valueExtractor" not in metric and "bucketOptions" not in metric  # a counter counts entries
    else:
        assert descriptor["valueType"] == "DISTRIBUTION"
        buckets = metric["bucketOptions"]["exponentialBuckets"]
        assert buckets["growthFactor"] > 1 and buckets["scale"] > 0 and buckets["numFiniteBuckets"] > 0


def test_every_metric_is_charted_or_alerted_on():
    used = json.dumps(DASHBOARD) + json.dumps(ALERTS)
    unused = [name for name in METRICS if USER_METRIC + name not in used and f"user_{name}" not in used]
    assert not unused, f"metrics nobody looks at: {unused}"


# ---------------------------------------------------------------- the API's message classes


def test_every_field_and_enum_value_is_one_the_apis_define():
    documents = [(google_sdk.LOGGING_V2, "LogMetric", metric) for metric in METRICS.values()]
    documents += [(google_sdk.MONITORING_V3, "AlertPolicy", policy) for policy in ALERTS.values()]
    documents.append((google_sdk.MONITORING_V1, "Dashboard", DASHBOARD))
    # The check itself can fail: a misspelt field and a wrong enum value are reported.
    documents.append((google_sdk.MONITORING_V3, "AlertPolicy", {"combiner": "XOR", "displayNme": "x"}))
    *results, control = google_sdk.unrecognized_fields(documents)
    assert sorted(control) == ["AlertPolicy.combiner", "AlertPolicy.displayNme"]
    names = [f"metrics/{n}" for n in METRICS] + [f"alerts/{n}" for n in ALERTS] + ["dashboard"]
    problems = {name: found for name, found in zip(names, results) if found}
    assert not problems


# ---------------------------------------------------------------- time series queries

METRIC_TYPE = re.compile(r'metric\.type\s*=\s*"([^"]+)"')
RESOURCE_TYPE = re.compile(r'resource\.type\s*=\s*"([^"]+)"')
METRIC_LABEL = re.compile(r"metric\.labels?\.([A-Za-z_][A-Za-z0-9_]*)")
SECONDS = re.compile(r"^(\d+)s$")


def seconds(value: str) -> int:
    match = SECONDS.match(value)
    assert match, f"{value!r} is not a duration in whole seconds"
    return int(match.group(1))


def check_time_series(where: str, filter_: str, aggregations: list[dict], *, alerting: bool) -> tuple[str, str]:
    """The rules of a Monitoring filter with its aggregations; returns (metric kind, value type)."""
    assert len(filter_) <= 2048, f"{where}: filter longer than 2048 characters"
    types = METRIC_TYPE.findall(filter_)
    assert len(types) == 1, f"{where}: a filter names exactly one metric type"
    kind, value_type, resource, labels = metric_facts(types[0])
    assert RESOURCE_TYPE.findall(filter_) == [resource], f"{where}: name the resource type {resource}"
    assert set(METRIC_LABEL.findall(filter_)) <= labels, f"{where}: filters on labels {types[0]} does not have"
    for aggregation in aggregations:
        aligner = aggregation.get("perSeriesAligner", "ALIGN_NONE")
        reducer = aggregation.get("crossSeriesReducer", "REDUCE_NONE")
        if aligner != "ALIGN_NONE":
            period = seconds(aggregation["alignmentPeriod"])
            assert period >= 60 and period % 60 == 0, f"{where}: alignment period"
            assert period <= 90000 or not alerting, f"{where}: alerting allows at most 25 h of alignment"
        if reducer != "REDUCE_NONE":
            assert aligner != "ALIGN_NONE", f"{where}: a reducer needs an aligner"
        if aligner in ("ALIGN_SUM", "ALIGN_DELTA"):
            assert kind in ("DELTA", "CUMULATIVE"), f"{where}: {aligner} on a {kind} metric"
        if reducer.startswith("REDUCE_PERCENTILE") or aligner.startswith("ALIGN_PERCENTILE"):
            assert value_type == "DISTRIBUTION", f"{where}: percentiles of a {value_type} metric"
        for field in aggregation.get("groupByFields", []):
            assert field.startswith(("metric.label.", "resource.label.")), where
            if field.startswith("metric.label."):
                assert field.removeprefix("metric.label.") in labels, f"{where}: {types[0]} has no label {field}"
    return kind, value_type


PROMQL_METRIC = re.compile(r"logging_googleapis_com:user_([A-Za-z0-9_]+?)(_sum|_count|_bucket)?\{([^}]*)\}")


def check_promql(where: str, query: str) -> None:
    """Log-based metrics in PromQL: logging_googleapis_com:user_NAME (distributions: _sum/_count/_bucket)."""
    found = PROMQL_METRIC.findall(query)
    assert found, f"{where}: no log-based metric in {query!r}"
    for name, suffix, selector in found:
        metric = METRICS.get(name)
        assert metric is not None, f"{where}: {name} is not in monitoring/metrics"
        is_distribution = metric["metricDescriptor"]["valueType"] == "DISTRIBUTION"
        assert bool(suffix) == is_distribution, f"{where}: {name}{suffix}: suffixes belong to distributions"
        assert f'monitored_resource="{RUN_RESOURCE}"' in selector, where
        labels = {label["key"] for label in metric["metricDescriptor"].get("labels", [])}
        for group in re.findall(r"by \(([^)]*)\)", query):
            assert {label.strip() for label in group.split(",")} <= labels, f"{where}: {name} lacks labels {group}"


# ---------------------------------------------------------------- dashboard

WIDGET_CONTENT = {"xyChart", "scorecard", "text", "timeSeriesTable", "pieChart", "logsPanel", "alertChart",
                  "incidentList", "collapsibleGroup", "sectionHeader", "blank"}


def test_dashboard_is_a_mosaic_of_tiles_that_fit_and_do_not_overlap():
    assert DASHBOARD["displayName"] and "etag" not in DASHBOARD  # etag: never on create, and update without one
    assert DASHBOARD["name"] == "projects/dicom-prod-1/dashboards/" + _deploy_constant("DASHBOARD_ID")
    mosaic = DASHBOARD["mosaicLayout"]
    columns = mosaic["columns"]
    assert 1 <= columns <= 48
    taken: set[tuple[int, int]] = set()
    for tile in mosaic["tiles"]:
        assert tile["width"] >= 1 and tile["height"] >= 1 and tile["xPos"] >= 0 and tile["yPos"] >= 0
        assert tile["xPos"] + tile["width"] <= columns, tile["widget"].get("title")
        cells = {(x, y) for x in range(tile["xPos"], tile["xPos"] + tile["width"])
                 for y in range(tile["yPos"], tile["yPos"] + tile["height"])}
        assert not cells & taken, f"tile {tile['widget'].get('title')!r} overlaps another"
        taken |= cells
        assert len(set(tile["widget"]) & WIDGET_CONTENT) == 1, "one content per widget"


def dashboard_queries() -> list[tuple[str, dict]]:
    found = []
    for tile in DASHBOARD["mosaicLayout"]["tiles"]:
        for data_set in tile["widget"].get("xyChart", {}).get("dataSets", []):
            found.append((tile["widget"]["title"], data_set["timeSeriesQuery"]))
    return found


@pytest.mark.parametrize("title,query", dashboard_queries(), ids=[q[0][:40] for q in dashboard_queries()])
def test_dashboard_queries_name_defined_metrics_and_labels(title, query):
    kinds = {"timeSeriesFilter", "prometheusQuery", "timeSeriesFilterRatio", "timeSeriesQueryLanguage"}
    assert len(set(query) & kinds) == 1, f"{title}: one kind of query per data set"
    if "prometheusQuery" in query:
        check_promql(title, query["prometheusQuery"])
    else:
        series = query["timeSeriesFilter"]
        check_time_series(title, series["filter"], [series["aggregation"]], alerting=False)


def test_dashboard_shows_what_the_issue_asks_for():
    titles = " | ".join(t["widget"].get("title", "") for t in DASHBOARD["mosaicLayout"]["tiles"]).lower()
    for subject in ("results per rule", "instances imported", "failed", "conflicts", "latency", "in flight",
                    "dead-letter"):
        assert subject in titles, subject


# ---------------------------------------------------------------- alert policies

CONDITION_KINDS = {"conditionThreshold", "conditionAbsent", "conditionMatchedLog", "conditionMonitoringQueryLanguage",
                   "conditionPrometheusQueryLanguage", "conditionSql"}
LABEL_TEXT = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_policy_follows_the_api_rules(name):
    policy = ALERTS[name]
    assert policy["displayName"] and len(policy["displayName"]) <= 512
    # deploy.sh finds an existing policy by these labels: they must be exactly these.
    assert policy["userLabels"] == {"app": "dicom-import", "policy": name}
    assert all(LABEL_TEXT.match(k) and re.fullmatch(r"[a-z0-9_-]{0,63}", v) for k, v in policy["userLabels"].items())
    assert "notificationChannels" not in policy and "name" not in policy  # set by deploy.sh / by the API
    assert policy["combiner"] in ("AND", "OR")
    assert 1 <= len(policy["conditions"]) <= 6
    documentation = policy["documentation"]
    assert documentation["mimeType"] == "text/markdown" and 0 < len(documentation["content"]) <= 8192
    assert "${" not in json.dumps(policy), "no template variables: deploy.sh passes the policy inline"
    for condition in policy["conditions"]:
        where = f"{name}: {condition['displayName']}"
        assert condition["displayName"] and "name" not in condition
        [kind] = set(condition) & CONDITION_KINDS
        body = condition[kind]
        if kind == "conditionMatchedLog":
            assert len(policy["conditions"]) == 1, f"{where}: a log-match condition stands alone"
            assert seconds(policy["alertStrategy"]["notificationRateLimit"]["period"]) >= 300
            continue
        check_time_series(where, body["filter"], body.get("aggregations", []), alerting=True)
        duration = seconds(body["duration"])
        assert duration % 60 == 0
        if kind == "conditionAbsent":
            assert duration >= 120, f"{where}: absence needs at least 120 s"
        else:
            assert body["comparison"] in ("COMPARISON_GT", "COMPARISON_LT")
            assert isinstance(body["thresholdValue"], (int, float))
            if "denominatorFilter" in body:
                check_time_series(where, body["denominatorFilter"], body["denominatorAggregations"], alerting=True)
                periods = lambda aggs: [(a["alignmentPeriod"], tuple(a.get("groupByFields", []))) for a in aggs]
                assert periods(body["aggregations"]) == periods(body["denominatorAggregations"]), \
                    f"{where}: numerator and denominator must align alike"


def test_policies_cover_the_issue_s_four_alerts():
    kinds = {name: {k for c in p["conditions"] for k in c} & CONDITION_KINDS for name, p in ALERTS.items()}
    bad = ALERTS["bad-results"]["conditions"][0]["conditionMatchedLog"]["filter"]
    assert all(f'"{outcome}"' in bad for outcome in ("FAILED", "REJECTED", "UNKNOWN")) and '"PARTIAL"' not in bad
    ratio = ALERTS["failure-ratio"]["conditions"][0]["conditionThreshold"]
    assert "denominatorFilter" in ratio and ratio["aggregations"][0]["alignmentPeriod"] == "3600s"
    dead = json.dumps(ALERTS["dead-letters"])
    assert PLACEHOLDERS["{{FOLLOWUP_DEAD_LETTER}}"] in dead and PLACEHOLDERS["{{RESULTS_DEAD_LETTER}}"] in dead
    assert kinds["silence"] == {"conditionAbsent", "conditionThreshold"} and ALERTS["silence"]["combiner"] == "AND"
