"""``export`` on the local stack: whole store, by study, series, instance and filter file; refusals before any call."""

import json
import re

import pytest

from localstack.samples import make_series, make_study
from tests.cli.stack_helpers import files
from tests.message_schemas import validate

pytestmark = pytest.mark.stack


@pytest.fixture
def filled(scenario):
    """The scenario's store holding study A (2 series x 2 instances) and study B (1 instance)."""
    study_a = make_study(2, 2)
    study_b = make_series(1)
    scenario.upload(files(study_a + study_b, "seed/"))
    scenario.import_now(f"gs://{scenario.bucket}/seed/**.dcm")
    scenario.study_a, scenario.study_b = study_a, study_b
    return scenario


def exported(scenario, folder):
    return scenario.names(scenario.export_bucket, f"{folder}/")


def expected(folder, instances):
    return sorted(f"{folder}/{u.study}/{u.series}/{u.sop}.dcm" for u, _ in instances)


def filter_file(result, state_bucket, request_id):
    """The state-bucket path of ``result``'s filter file, checked to be named by its request id and fingerprint."""
    path = result["filter"]["uri"].removeprefix(f"gs://{state_bucket}/")
    assert re.fullmatch(rf"exports/{re.escape(request_id)}\.[0-9a-f]{{16}}\.filter\.txt", path), path
    return path


def test_the_whole_store_is_exported_and_the_result_printed(cli, filled):
    folder = filled.rule  # unique
    result = cli(*filled.args(filled.config(), "export", "--store", "main", "--to", f"gs://{filled.export_bucket}/{folder}"))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "export SUCCEEDED: 5 instances exported, 0 failed"
    assert f"  store        {filled.store}" in lines and f"  destination  gs://{filled.export_bucket}/{folder}" in lines
    assert not any(line.startswith("  filter") for line in lines)
    assert exported(filled, folder) == expected(folder, filled.study_a + filled.study_b)


def test_a_study_export_publishes_its_result_and_writes_the_filter_file(cli, filled):
    folder = filled.rule
    study = filled.study_a[0][0].study
    result = cli(*filled.args(filled.config(), "export", "--store", "main", "--to",
                              f"gs://{filled.export_bucket}/{folder}", "--study", study, "--request-id", f"{folder}-1",
                              "--json"))
    assert result.code == 0, result.err
    printed = json.loads(result.out)
    assert printed["outcome"] == "SUCCEEDED" and printed["counter"] == {"success": 4, "failure": 0}
    kept = filter_file(printed, filled.state_bucket, f"{folder}-1")
    assert printed["filter"] == {"uri": f"gs://{filled.state_bucket}/{kept}",
                                 "studies": 1, "series": 0, "instances": 0, "query": None}
    assert filled.read_text(filled.state_bucket, kept) == f"/studies/{study}\n"
    assert exported(filled, folder) == expected(folder, filled.study_a)
    [(message, attributes)] = filled.results(1, requestId=f"{folder}-1")
    validate(message, attributes)
    assert message == printed

    before = filled.stats()
    again = cli(*filled.args(filled.config(), "export", "--store", "main", "--to",
                             f"gs://{filled.export_bucket}/{folder}", "--study", study, "--request-id", f"{folder}-1",
                             "--json"))
    assert again.code == 0 and json.loads(again.out) == printed
    assert "dicomStores.export" not in filled.calls_since(before)  # the same request id is not exported twice


def test_series_instances_and_a_filter_file_combine(cli, filled, tmp_path):
    folder = filled.rule
    (a1, _), (a2, _), (a3, _), _ = filled.study_a
    b = filled.study_b[0][0]
    other_series = a3 if a3.series != a1.series else filled.study_a[3][0]
    filter_file = tmp_path / "filter.txt"
    filter_file.write_text(f"/studies/{b.study}\r\n\n")
    result = cli(*filled.args(filled.config(), "export", "--store", filled.store, "--to",
                              f"gs://{filled.export_bucket}/{folder}", "--series", f"{a1.study}/{a1.series}",
                              "--instance", f"{other_series.study}/{other_series.series}/{other_series.sop}",
                              "--filter-file", str(filter_file)))
    assert result.code == 0, result.err
    assert "(1 study, 1 series, 1 instance)" in result.out
    in_series = [item for item in filled.study_a if item[0].series == a1.series]
    assert exported(filled, folder) == expected(folder, in_series + [(other_series, b""), (b, b"")])


def test_a_study_not_in_the_store_is_refused_before_any_export_or_write(cli, filled):
    folder = filled.rule
    present = filled.study_a[0][0]
    missing = "1.2.3.4.5.6.7"
    before = filled.stats()
    result = cli(*filled.args(filled.config(), "export", "--store", "main", "--to",
                              f"gs://{filled.export_bucket}/{folder}", "--study", present.study,
                              "--series", f"{present.study}/{missing}", "--request-id", f"{folder}-x"))
    assert result.code == 1 and result.out == ""
    assert result.err.endswith(f"error: not in DICOM store {filled.store}: /studies/{present.study}/series/{missing}: "
                               "check the UIDs (a QIDO search found nothing)\n")
    calls = filled.calls_since(before)
    assert calls == {"dicomStores.searchForStudies": 1, "dicomStores.studies.searchForSeries": 1}
    assert filled.names(filled.state_bucket, f"exports/{folder}-x") == [] and exported(filled, folder) == []


def test_a_bad_uid_unknown_store_or_destination_outside_the_allow_list_is_refused_before_any_call(cli, filled):
    before = filled.stats()
    inside = f"gs://{filled.export_bucket}/{filled.rule}"
    bad_uid = cli(*filled.args(filled.config(), "export", "--store", "main", "--to", inside, "--study", "1.02.x"))
    assert bad_uid.code == 1 and "study UID '1.02.x' is not a DICOM UID" in bad_uid.err
    unknown = cli(*filled.args(filled.config(), "export", "--store", "archive", "--to", inside))
    assert unknown.code == 1 and "store 'archive' is not one of the stores in " in unknown.err
    gone = filled.store.rsplit("/", 1)[0] + "/no-such-store"
    unconfigured = cli(*filled.args(filled.config(), "export", "--store", gone, "--to", inside))
    assert unconfigured.code == 1 and f"store '{gone}' is not one of the stores in " in unconfigured.err
    config = filled.config()
    outside = cli(*filled.args(config, "export", "--store", "main", "--to", "gs://b-x/d"))
    assert outside.code == 1 and outside.err == (
        f"error: destination gs://b-x/d is outside exports.destinations (gs://{filled.export_bucket}/): export into one "
        f"of those folders, or add the folder to exports.destinations in {config} and redeploy\n")
    assert filled.calls_since(before) == {}

    absent = cli(*filled.args(filled.config(stores={"gone": gone}), "export", "--store", "gone", "--to", inside,
                              "--study", filled.study_b[0][0].study))
    assert absent.code == 1 and "Traceback" not in absent.err
    assert absent.err.splitlines()[-1].startswith(
        f"error: cannot search DICOM store {gone} for the filter paths: 404 NOT_FOUND")


@pytest.fixture
def cohort(scenario):
    """Five studies in the scenario's store; the query ModalitiesInStudy=CT&StudyDate=2026... matches two."""
    studies = {
        "ct-jan": make_study(2, 2, modality="CT", study_date="20260110"),
        "ct-dec": make_series(1, modality="CT", study_date="20261231"),
        "ct-2025": make_series(2, modality="CT", study_date="20251231"),
        "mr-jun": make_series(1, modality="MR", study_date="20260615"),
        "ct-2027": make_series(1, modality="CT", study_date="20270101"),
    }
    scenario.upload(files([item for items in studies.values() for item in items], "cohort/"))
    scenario.import_now(f"gs://{scenario.bucket}/cohort/**.dcm")
    scenario.cohort = studies
    return scenario


WHERE = "ModalitiesInStudy=CT&StudyDate=20260101-20261231"


def test_export_where_exports_exactly_the_matching_studies_and_keeps_the_filter_file(cli, cohort):
    folder = cohort.rule
    result = cli(*cohort.args(cohort.config(), "export", "--store", "main", "--to", f"gs://{cohort.export_bucket}/{folder}",
                              "--where", WHERE, "--request-id", f"{folder}-q", "--page-size", "1", "--json"))
    assert result.code == 0, result.err
    printed = json.loads(result.out)
    matching = cohort.cohort["ct-jan"] + cohort.cohort["ct-dec"]
    studies = list(dict.fromkeys(uids.study for uids, _ in matching))
    assert printed["outcome"] == "SUCCEEDED" and printed["counter"] == {"success": 5, "failure": 0}
    filter_path = filter_file(printed, cohort.state_bucket, f"{folder}-q")
    assert printed["filter"] == {"uri": f"gs://{cohort.state_bucket}/{filter_path}", "studies": 2,
                                 "series": 0, "instances": 0,
                                 "query": {"where": WHERE, "level": "study", "matches": 2, "pages": 3}}
    kept = cohort.read_text(cohort.state_bucket, filter_path).splitlines()
    assert sorted(kept) == sorted(f"/studies/{uid}" for uid in studies)
    assert exported(cohort, folder) == expected(folder, matching)
    assert "studies found: 2 (3 pages searched)" in result.err.splitlines()
    [(message, attributes)] = cohort.results(1, requestId=f"{folder}-q")
    validate(message, attributes)
    assert message == printed


def test_export_where_at_series_level_lists_series_and_says_what_it_found(cli, cohort):
    folder = cohort.rule
    result = cli(*cohort.args(cohort.config(), "export", "--store", "main", "--to", f"gs://{cohort.export_bucket}/{folder}",
                              "--where", "Modality=CT&StudyDate=-20260110", "--level", "series"))
    assert result.code == 0, result.err
    matching = cohort.cohort["ct-jan"] + cohort.cohort["ct-2025"]
    assert exported(cohort, folder) == expected(folder, matching)
    lines = result.out.splitlines()
    assert lines[0] == "export SUCCEEDED: 6 instances exported, 0 failed"
    assert any(line.startswith("  filter ") and line.endswith("(3 series)") for line in lines), lines
    assert "  query        Modality=CT&StudyDate=-20260110 (series level, 3 matches, 2 pages searched)" in lines


def test_export_where_refuses_before_writing_a_query_too_broad_empty_or_malformed(cli, cohort):
    before = cohort.stats()
    bad = cli(*cohort.args(cohort.config(), "export", "--store", "main", "--to", f"gs://{cohort.export_bucket}/x",
                           "--where", "StudyDate=2026-01-01"))
    assert bad.code == 1 and "StudyDate='2026-01-01' is not a YYYYMMDD value or range" in bad.err
    assert cohort.calls_since(before) == {}
    capped = cohort.config(extra="exports:\n  max_query_results: 3\n")
    broad = cli(*cohort.args(capped, "export", "--store", "main", "--to", f"gs://{cohort.export_bucket}/x",
                             "--where", "ModalitiesInStudy=CT", "--page-size", "2", "--request-id", f"{cohort.rule}-cap"))
    assert broad.code == 1 and broad.err.splitlines()[-1] == (
        f"error: the query 'ModalitiesInStudy=CT' matches more than 3 studies in {cohort.store}: narrow it (a shorter "
        f"date range, another attribute) or raise exports.max_query_results in {capped}")
    none = cli(*cohort.args(cohort.config(), "export", "--store", "main", "--to", f"gs://{cohort.export_bucket}/x",
                            "--where", "StudyDate=19990101", "--request-id", f"{cohort.rule}-none"))
    assert none.code == 1 and "matches no study in" in none.err
    assert cohort.names(cohort.state_bucket, f"exports/{cohort.rule}-") == []
    assert set(cohort.calls_since(before)) == {"dicomStores.searchForStudies"}
