"""QIDO-RS searches and WADO-RS retrieval of one instance."""

import re
from io import BytesIO

import pydicom
import pytest

from localstack.samples import bundled_bytes, make_series, new_uid, with_new_uids
from tests.emulator.client import Api, StoreRef, assert_google_error, counter


@pytest.fixture
def loaded(api: Api, store: StoreRef, upload):
    """A store with study A (CT series of 2 + MR series of 1, patient P-A) and study B (CT, 3 instances, P-B)."""
    study_a, study_b = new_uid(), new_uid()
    items = (
        make_series(2, study_uid=study_a, patient_id="P-A", modality="CT")
        + make_series(1, study_uid=study_a, patient_id="P-A", modality="MR", series_number=2)
        + make_series(3, study_uid=study_b, patient_id="P-B", modality="CT")
    )
    for uids, data in items:
        upload(f"w/{uids.sop}.dcm", data)
    done = api.import_and_wait(store, upload("w/x.txt", b"").rsplit("/", 1)[0] + "/*.dcm")
    assert counter(done) == {"success": "6"}
    return store, study_a, study_b, items


def value(result: dict, tag: str):
    return result[tag]["Value"][0]


def test_search_studies_with_computed_attributes(api, loaded):
    store, study_a, study_b, _ = loaded
    studies = {value(s, "0020000D"): s for s in api.qido(store, "studies")}
    assert set(studies) == {study_a, study_b}
    first = studies[study_a]
    assert first["00100020"] == {"vr": "LO", "Value": ["P-A"]}
    assert first["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}  # ModalitiesInStudy
    assert value(first, "00201206") == 2 and value(first, "00201208") == 3
    assert list(first) == sorted(first)  # tags in order
    assert "7FE00010" not in first and "00080018" not in first  # no pixel data, no instance attributes


def test_study_filters(api, loaded):
    store, study_a, study_b, _ = loaded
    assert [value(s, "0020000D") for s in api.qido(store, "studies", PatientID="P-B")] == [study_b]
    assert [value(s, "0020000D") for s in api.qido(store, "studies", ModalitiesInStudy="MR")] == [study_a]
    assert {value(s, "0020000D") for s in api.qido(store, "studies", **{"00100020": "P-*"})} == {study_a, study_b}
    listed = api.qido(store, "studies", StudyInstanceUID=f"{study_b},{study_a}")
    assert {value(s, "0020000D") for s in listed} == {study_a, study_b}
    assert api.qido(store, "studies", PatientID="nobody") == []
    in_order = [value(s, "0020000D") for s in api.qido(store, "studies")]
    assert [value(s, "0020000D") for s in api.qido(store, "studies", limit=1, offset=1)] == in_order[1:]
    assert [value(s, "0020000D") for s in api.qido(store, "studies", limit=1)] == in_order[:1]


def test_series_and_instances_searches(api, loaded):
    store, study_a, study_b, items = loaded
    series = api.qido(store, f"studies/{study_a}/series")
    assert {value(s, "00080060"): value(s, "00201209") for s in series} == {"CT": 2, "MR": 1}
    everywhere = api.qido(store, "series", Modality="CT")
    assert {value(s, "0020000D") for s in everywhere} == {study_a, study_b}
    assert "00100020" in everywhere[0]  # study attributes when searching all series
    ct_a = items[0][0]
    in_series = api.qido(store, f"studies/{study_a}/series/{ct_a.series}/instances")
    assert {value(i, "00080018") for i in in_series} == {u.sop for u, _ in items[:2]}
    assert value(in_series[0], "00280010") == 8  # Rows
    assert len(api.qido(store, "instances")) == 6
    assert len(api.qido(store, f"studies/{study_b}/instances")) == 3
    assert len(api.qido(store, "instances", SeriesInstanceUID=ct_a.series)) == 2
    assert len(api.qido(store, "instances", Modality="MR")) == 1
    one = api.qido(store, "instances", SOPInstanceUID=items[5][0].sop)
    assert [value(i, "0020000D") for i in one] == [study_b]


def test_includefield(api, loaded):
    store, study_a, _, _ = loaded
    plain = api.qido(store, f"studies/{study_a}/series")[0]
    assert "00200013" not in plain
    extra = api.qido(store, f"studies/{study_a}/series", includefield="InstanceNumber")[0]
    assert extra["00200013"]["vr"] == "IS" and value(extra, "00200013") in (1, 2)
    everything = api.qido(store, f"studies/{study_a}/series", includefield="all")[0]
    assert "00280100" in everything and "7FE00010" not in everything


def test_bad_queries_are_400(api, loaded):
    store = loaded[0]
    assert_google_error(api.call("GET", f"{store.web}/studies", params={"NoSuchKeyword": "x"}), 400,
                        "INVALID_ARGUMENT", "NoSuchKeyword is not a supported study level attribute")
    assert_google_error(api.call("GET", f"{store.web}/studies", params={"limit": "-1"}), 400, "INVALID_ARGUMENT", "limit")


@pytest.mark.parametrize("resource, params, message", [
    # the wordings seen from the real API (a public client matches them); the key named as it was sent
    ("studies", {"StudyDescription": "x"}, "StudyDescription is not a supported study level attribute"),
    ("instances", {"SOPClassUID": "1.2"}, "SOPClassUID is not a supported instance or series level attribute"),
    ("studies", {"Modality": "CT"}, "Modality is not a supported study level attribute"),  # a series key
    ("studies", {"NumberOfStudyRelatedInstances": "3"}, "not a supported study level attribute"),
    ("studies", {"StudyTime": "08-12"}, "StudyTime is not a supported study level attribute"),
    ("series", {"SOPInstanceUID": "1.2"}, "SOPInstanceUID is not a supported instance or series level attribute"),
    ("series", {"0008103E": "*T1*"}, "0008103E is not a supported instance or series level attribute"),
    ("instances", {"includefield": "AvailableTransferSyntaxUID"},
     "unknown/unsupported QIDO attribute: AvailableTransferSyntaxUID"),
    ("studies", {"includefield": "NoSuchKeyword"}, "unknown/unsupported QIDO attribute: NoSuchKeyword"),
])
def test_keys_the_api_does_not_search_by_are_refused_in_its_words(api, loaded, resource, params, message):
    store = loaded[0]
    assert_google_error(api.call("GET", f"{store.web}/{resource}", params=params), 400, "INVALID_ARGUMENT", message)


def test_each_level_searches_by_its_own_and_the_higher_levels_keys(api, loaded):
    store, study_a, _, items = loaded
    ct = items[0][0]
    assert len(api.qido(store, "series", PatientID="P-A", StudyDate="", Modality="CT", SeriesInstanceUID=ct.series)) == 1
    assert len(api.qido(store, f"studies/{study_a}/instances", AccessionNumber="", SOPInstanceUID=ct.sop)) == 1
    with_fields = api.qido(store, "studies", PatientID="P-A", includefield="StudyDescription,SOPClassUID")
    assert len(with_fields) == 1, "includefield takes attributes that are not match keys"


def test_retrieve_instance_as_stored_and_multipart(api, loaded):
    store, _, _, items = loaded
    uids, data = items[0]
    path = f"{store.web}/studies/{uids.study}/series/{uids.series}/instances/{uids.sop}"
    raw = api.call("GET", path, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert raw.status_code == 200 and raw.content == data
    assert raw.headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    multipart = api.call("GET", path)
    content_type = multipart.headers["Content-Type"]
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    boundary = re.search(r"boundary=(\S+)", content_type).group(1)
    parts = multipart.content.split(f"--{boundary}".encode())
    assert parts[0] == b"" and parts[-1] == b"--\r\n" and len(parts) == 3
    head, _, body = parts[1].partition(b"\r\n\r\n")
    assert b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1" in head
    assert body[:-2] == data and body[-2:] == b"\r\n"


def test_retrieve_transcodes_by_default_and_refuses_unknown_accept(api, store, upload):
    uids, data = with_new_uids(bundled_bytes("MR_small_implicit.dcm"))
    assert counter(api.import_and_wait(store, upload("i/mr.dcm", data))) == {"success": "1"}
    path = f"{store.web}/studies/{uids.study}/series/{uids.series}/instances/{uids.sop}"
    single = api.call("GET", path, headers={"Accept": "application/dicom"})
    assert single.headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert pydicom.dcmread(BytesIO(single.content)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    stored = api.call("GET", path, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert stored.headers["Content-Type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2"
    assert_google_error(api.call("GET", path, headers={"Accept": "image/jpeg"}), 406, "INVALID_ARGUMENT", "transfer-syntax=*")


def test_retrieve_missing_instance_or_store_is_404(api, loaded):
    store, study_a, _, items = loaded
    uids = items[0][0]
    missing = f"{store.web}/studies/{study_a}/series/{uids.series}/instances/1.2.3"
    assert_google_error(api.call("GET", missing), 404, "NOT_FOUND", "instances/1.2.3")
    assert_google_error(api.call("GET", f"{store.dataset}/dicomStores/none/dicomWeb/studies"), 404, "NOT_FOUND")


@pytest.fixture
def dated(api: Api, store: StoreRef, upload):
    """Four one-instance studies: (StudyDate, Modality) as below, in this order."""
    when = [("20251231", "CT"), ("20260101", "CT"), ("20260615", "MR"), ("20261231", "CT")]
    studies = []
    for date, modality in when:
        [(uids, data)] = make_series(1, study_date=date, modality=modality)
        upload(f"d/{uids.sop}.dcm", data)
        studies.append(uids.study)
    done = api.import_and_wait(store, upload("d/x.txt", b"").rsplit("/", 1)[0] + "/*.dcm")
    assert counter(done) == {"success": "4"}
    return store, studies


@pytest.mark.parametrize("query, expected", [
    ({"StudyDate": "20260101-20261231"}, [1, 2, 3]),
    ({"StudyDate": "-20260101"}, [0, 1]),
    ({"StudyDate": "20260615-"}, [2, 3]),
    ({"StudyDate": "20260101-20260101"}, [1]),
    ({"StudyDate": "20260101"}, [1]),
    ({"ModalitiesInStudy": "CT", "StudyDate": "20260101-20261231"}, [1, 3]),
    ({"00080020": "20250101-20251231"}, [0]),
])
def test_date_ranges_match_as_ps3_4_says(api, dated, query, expected):
    store, studies = dated
    found = [value(s, "0020000D") for s in api.qido(store, "studies", **query)]
    assert sorted(found) == sorted(studies[i] for i in expected)


def test_a_range_works_at_series_and_instance_level_too(api, dated):
    store, studies = dated
    series = api.qido(store, "series", StudyDate="20260101-20261231", Modality="CT")
    assert sorted(value(s, "0020000D") for s in series) == sorted([studies[1], studies[3]])
    instances = api.qido(store, "instances", StudyDate="-20251231")
    assert [value(i, "0020000D") for i in instances] == [studies[0]]


@pytest.mark.parametrize("query, fragment", [
    ({"StudyDate": "2026-01-01"}, "is not a DA range"),
    ({"StudyDate": "20261231-20260101"}, "ends before it starts"),
    ({"StudyDate": "-"}, "has no bound"),
])
def test_malformed_ranges_are_400(api, dated, query, fragment):
    store, _ = dated
    assert_google_error(api.call("GET", f"{store.web}/studies", params=query), 400, "INVALID_ARGUMENT", fragment)


def test_paging_walks_every_match_once_and_warns_while_more_remain(api, dated):
    store, studies = dated
    seen, offset, warnings = [], 0, []
    while True:
        response = api.call("GET", f"{store.web}/studies", params={"limit": "3", "offset": str(offset)})
        assert response.status_code == 200
        page = response.json()
        warnings.append(response.headers.get("Warning"))
        if not page:
            break
        seen += [value(s, "0020000D") for s in page]
        offset += len(page)
    assert sorted(seen) == sorted(studies) and len(seen) == len(set(seen))
    assert warnings[0].startswith("299 ") and warnings[0].endswith('"There are additional results that can be requested"')
    assert warnings[1:] == [None, None], "the last page and the empty page past the end carry no warning"


def test_fuzzymatching_is_answered_literally_with_ps3_18s_warning(api, dated):
    store, studies = dated
    fuzzy = api.call("GET", f"{store.web}/studies", params={"StudyInstanceUID": studies[0], "fuzzymatching": "true"})
    literal = api.call("GET", f"{store.web}/studies", params={"StudyInstanceUID": studies[0], "fuzzymatching": "false"})
    assert fuzzy.json() == literal.json() and len(literal.json()) == 1
    assert fuzzy.headers["Warning"].startswith("299 ") and fuzzy.headers["Warning"].endswith(
        '"The fuzzymatching parameter is not supported. Only literal matching has been performed."')
    assert "Warning" not in literal.headers


def test_limit_defaults_to_and_is_clamped_at_the_maximum_and_offset_is_bounded(api, dated):
    store, studies = dated
    assert len(api.qido(store, "studies")) == 4
    assert len(api.qido(store, "studies", limit=999999)) == 4
    assert api.qido(store, "studies", offset=4) == [] and api.qido(store, "studies", offset=1_000_000) == []
    assert_google_error(api.call("GET", f"{store.web}/studies", params={"offset": "1000001"}), 400,
                        "INVALID_ARGUMENT", "offset")


def test_store_metrics_count_studies_series_instances_and_bytes(api, loaded, store):
    _, study_a, study_b, items = loaded
    response = api.call("GET", f"{store.name}:getDICOMStoreMetrics")
    assert response.status_code == 200, response.text
    metrics = response.json()
    assert {key: metrics[key] for key in ("name", "studyCount", "seriesCount", "instanceCount")} == {
        "name": store.name, "studyCount": "2", "seriesCount": "3", "instanceCount": "6"}
    assert int(metrics["blobStorageSizeBytes"]) == sum(len(data) for _, data in items)
    assert int(metrics["structuredStorageSizeBytes"]) > 0


def test_browsers_may_call_it_cors_preflight_and_head_as_google_apis_answer(api, dated):
    store, studies = dated
    origin = "http://localhost:3000"
    preflight = api.call("OPTIONS", f"{store.web}/studies", headers={
        "Origin": origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "authorization"
    page = api.call("GET", f"{store.web}/studies", params={"limit": "1"}, headers={"Origin": origin})
    assert page.headers["Access-Control-Allow-Origin"] == origin and "Warning" in page.headers[
        "Access-Control-Expose-Headers"], "a viewer paging through results must be able to read the Warning header"
    assert "Access-Control-Allow-Origin" not in api.call("GET", f"{store.web}/studies").headers, "no Origin, no CORS"
    head = api.call("HEAD", f"{store.web}/studies", params={"StudyInstanceUID": studies[0]})
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Type"].startswith("application/dicom+json")
