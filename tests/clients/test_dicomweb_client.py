"""dicomweb-client (``DICOMwebClient(url=".../dicomStores/S/dicomWeb")``) against the emulator.

It builds the QIDO query strings (repeated ``includefield``, ``fuzzymatching=true``,
``limit``/``offset``, paging by offset with ``get_remaining``) and parses WADO's
multipart responses itself: what it accepts is what the emulator must send.
"""

from __future__ import annotations

import logging
import warnings
from io import BytesIO
from xml.etree.ElementTree import fromstring

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from localstack.samples import make_series, new_uid

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


@pytest.fixture
def web(healthcare_emulator):
    """A dicomweb-client for a store, at the store's DICOMweb URL (as for the real API)."""

    def client(store: str) -> DICOMwebClient:
        return DICOMwebClient(url=f"{healthcare_emulator.url}/v1/{store}/dicomWeb")

    return client


@pytest.fixture
def loaded(loaded_store, web):
    """``loaded_store`` (tests/clients/conftest.py) with a dicomweb-client for its store in place of the store's name."""
    store, study_a, items, implicit = loaded_store
    return web(store), study_a, items, implicit


def values(results, tag):
    return [r[tag]["Value"][0] for r in results]


def test_search_for_studies_with_match_keys_limit_offset_and_fields(loaded):
    client, study_a, _, implicit = loaded
    study_b = implicit[0].study
    everything = values(client.search_for_studies(), STUDY_UID)
    assert sorted(everything) == sorted([study_a, study_b])
    assert values(client.search_for_studies(search_filters={"PatientID": "P-A"}), STUDY_UID) == [study_a]
    assert values(client.search_for_studies(search_filters={"00100020": "P-*"}), STUDY_UID) == [study_a]
    assert values(client.search_for_studies(search_filters={"ModalitiesInStudy": "CT"}), STUDY_UID) == [study_a]
    assert client.search_for_studies(search_filters={"PatientID": "nobody"}) == []
    assert values(client.search_for_studies(limit=1), STUDY_UID) == everything[:1]
    assert values(client.search_for_studies(limit=1, offset=1), STUDY_UID) == everything[1:]
    assert values(client.search_for_studies(limit=1, get_remaining=True), STUDY_UID) == everything  # pages by offset
    fuzzy = client.search_for_studies(fuzzymatching=True, search_filters={"PatientID": "P-A"})
    assert values(fuzzy, STUDY_UID) == [study_a]

    (with_fields,) = client.search_for_studies(search_filters={"PatientID": "P-A"}, fields=["StudyDescription", "00100030"])
    plain = client.search_for_studies(search_filters={"PatientID": "P-A"})[0]
    assert "00081030" in with_fields and "00100030" in with_fields
    assert with_fields["00201208"]["Value"] == [3] and plain["00201206"]["Value"] == [2]


def test_search_for_series_and_instances(loaded):
    client, study_a, items, implicit = loaded
    series = client.search_for_series(study_a)
    assert {s["00080060"]["Value"][0]: s["00201209"]["Value"][0] for s in series} == {"CT": 2, "MR": 1}
    assert len(client.search_for_series()) == 3
    mr = client.search_for_series(search_filters={"Modality": "MR"})
    assert sorted(values(mr, STUDY_UID)) == sorted([study_a, implicit[0].study])
    (with_number,) = client.search_for_series(study_a, search_filters={"Modality": "MR"}, fields=["SeriesNumber"])
    assert with_number["00200011"]["Value"] == [2]

    ct = items[0][0]
    assert sorted(values(client.search_for_instances(study_a, ct.series), SOP_UID)) == sorted(u.sop for u, _ in items[:2])
    assert len(client.search_for_instances(study_a)) == 3
    assert len(client.search_for_instances()) == 4
    assert values(client.search_for_instances(search_filters={"SOPInstanceUID": implicit[0].sop}), STUDY_UID) == [
        implicit[0].study
    ]
    assert len(client.search_for_instances(search_filters={"Modality": "CT"}, limit=1, get_remaining=True)) == 2


def test_unsupported_keys_fail_as_the_real_api_fails_so_workarounds_written_for_it_work(loaded):
    """wsidicom (PR #149) retries without a key when the 400's text names it, as Google's API words it."""
    client, study_a, _, _ = loaded
    client.set_http_retry_params(retry=False)
    with pytest.raises(requests.HTTPError) as by_class:
        client.search_for_instances(study_a, search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"})
    assert by_class.value.response.status_code == 400
    assert "SOPClassUID is not a supported instance or series level attribute" in by_class.value.response.text
    with pytest.raises(requests.HTTPError) as by_field:
        client.search_for_instances(study_a, fields=["AvailableTransferSyntaxUID"])
    assert "unknown/unsupported QIDO attribute: AvailableTransferSyntaxUID" in by_field.value.response.text
    assert len(client.search_for_instances(study_a, fields=[])) == 3


def test_retrieve_instance_parses_the_multipart_answer(loaded):
    client, _, items, (uids, data) = loaded
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dicomweb-client warns when a server answers WADO without multipart
        as_stored = client.retrieve_instance(uids.study, uids.series, uids.sop)  # default: transfer-syntax=*
        transcoded = client.retrieve_instance(uids.study, uids.series, uids.sop, media_types=(("application/dicom", EXPLICIT_LE),))
        plain = client.retrieve_instance(uids.study, uids.series, uids.sop, media_types=("application/dicom",))
    assert as_stored.file_meta.TransferSyntaxUID == IMPLICIT_LE and as_stored.SOPInstanceUID == uids.sop
    assert transcoded.file_meta.TransferSyntaxUID == EXPLICIT_LE and transcoded.SOPInstanceUID == uids.sop
    assert plain.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert transcoded.PixelData == as_stored.PixelData
    synthetic = items[0][0]
    assert client.retrieve_instance(synthetic.study, synthetic.series, synthetic.sop).PatientID == "P-A"


def test_retrieve_of_a_missing_instance_is_404(loaded):
    client, study_a, items, _ = loaded
    client.set_http_retry_params(retry=False)
    with pytest.raises(requests.HTTPError) as missing:
        client.retrieve_instance(study_a, items[0][0].series, new_uid())
    assert missing.value.response.status_code == 404
    assert missing.value.response.json()["error"]["status"] == "NOT_FOUND"


def dataset_of(data: bytes):
    return pydicom.dcmread(BytesIO(data))


def test_store_instances_then_search_and_retrieve(web, store):
    """STOW-RS as dicomweb-client sends it (multipart, no Accept: the API answers XML, which the client parses)."""
    client = web(store)
    items = make_series(2)
    study = items[0][0].study
    answer = client.store_instances([dataset_of(data) for _, data in items])
    assert answer.RetrieveURL == f"{client.base_url}/studies/{study}"
    referenced = {item.ReferencedSOPInstanceUID: item for item in answer.ReferencedSOPSequence}
    assert set(referenced) == {uids.sop for uids, _ in items}
    for uids, _ in items:
        assert referenced[uids.sop].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert referenced[uids.sop].RetrieveURL == f"{client.base_url}{uids.path}"
    assert "FailedSOPSequence" not in answer

    assert sorted(values(client.search_for_instances(study), SOP_UID)) == sorted(u.sop for u, _ in items)
    uids, data = items[1]
    assert client.retrieve_instance(uids.study, uids.series, uids.sop).PatientID == dataset_of(data).PatientID
    again = client.store_instances([dataset_of(items[0][1])], study_instance_uid=study)  # identical: accepted
    assert [item.ReferencedSOPInstanceUID for item in again.ReferencedSOPSequence] == [items[0][0].sop]
    assert len(client.search_for_instances(study)) == 2


def test_store_instances_failures(web, store):
    client = web(store)
    client.set_http_retry_params(retry=False)
    (uids, data), (other_uids, other) = make_series(2)
    client.store_instances([dataset_of(data)])
    changed = dataset_of(data)
    changed.PatientID = "SOMEONE-ELSE"

    with pytest.raises(requests.HTTPError) as conflict:
        client.store_instances([changed])
    response = conflict.value.response
    assert response.status_code == 409 and response.headers["Content-Type"] == "application/dicom+xml"
    root = fromstring(response.content)
    (failed,) = [a for a in root if a.get("keyword") == "FailedSOPSequence"]
    (item,) = list(failed)
    fields = {a.get("keyword"): a for a in item}
    assert set(fields) == {"FailureReason", "FailureDetail"}  # no UIDs, as the failed item seen from Google
    assert fields["FailureReason"][0].text == "272" and uids.sop in fields["FailureDetail"][0].text
    assert "checksum mismatch" in fields["FailureDetail"][0].text and fields["FailureDetail"].get("privateCreator") == "GOOGLE"

    with pytest.raises(requests.HTTPError) as wrong_study:
        client.store_instances([dataset_of(other)], study_instance_uid=new_uid())
    assert wrong_study.value.response.status_code == 409
    assert client.search_for_instances(search_filters={"SOPInstanceUID": other_uids.sop}) == []

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that FailureDetail (Google's private element) is no keyword
        mixed = client.store_instances([dataset_of(other), changed])  # one stored, one refused: 202
    assert [i.ReferencedSOPInstanceUID for i in mixed.ReferencedSOPSequence] == [other_uids.sop]
    assert len(mixed.FailedSOPSequence) == 1
    assert client.retrieve_instance(uids.study, uids.series, uids.sop).PatientID != "SOMEONE-ELSE"  # never overwritten


def test_store_instances_answers_json_when_asked_and_takes_chunked_bodies(healthcare_emulator, store):
    """A body larger than chunk_size goes out with Transfer-Encoding: chunked (as a whole study would)."""
    client = DICOMwebClient(url=f"{healthcare_emulator.url}/v1/{store}/dicomWeb", headers={"Accept": "application/dicom+json"},
                            chunk_size=4096)
    uids, data = make_series(1, rows=64, cols=64)[0]
    assert len(data) > 2 * 4096
    answer = client.store_instances([dataset_of(data)])
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [uids.sop]
    assert answer.RetrieveURL.endswith(f"/dicomWeb/studies/{uids.study}")


def test_store_one_instance_as_the_product_sample_does(healthcare_emulator, store):
    """The product's Python sample: an AuthorizedSession POSTs one file with Content-Type application/dicom."""
    from google.auth.credentials import AnonymousCredentials
    from google.auth.transport.requests import AuthorizedSession

    session = AuthorizedSession(AnonymousCredentials())
    uids, data = make_series(1)[0]
    url = f"{healthcare_emulator.url}/v1/{store}/dicomWeb/studies"
    response = session.post(url, data=data, headers={"Content-Type": "application/dicom"})
    assert response.status_code == 200, response.text
    root = fromstring(response.content)
    assert root.tag == "NativeDicomModel"
    assert f"/dicomWeb/studies/{uids.study}/series/{uids.series}/instances/{uids.sop}" in response.text
    stored = session.get(f"{url}/{uids.study}/series/{uids.series}/instances/{uids.sop}",
                         headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert stored.content == data

    not_dicom = session.post(url, data=b"hello", headers={"Content-Type": "application/dicom"})
    assert not_dicom.status_code == 409 and "not a DICOM file" in not_dicom.text
    metadata = session.post(url, data=b"[]", headers={"Content-Type": 'multipart/related; type="application/dicom+json"; boundary=x'})
    assert metadata.status_code == 501 and metadata.json()["error"]["status"] == "UNIMPLEMENTED"


def test_retrieve_study_series_and_metadata(loaded):
    client, study_a, items, implicit = loaded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        study = client.retrieve_study(study_a)
        series = client.retrieve_series(study_a, items[0][0].series)
        as_stored = client.retrieve_study(implicit[0].study, media_types=(("application/dicom", "*"),))
    assert sorted(ds.SOPInstanceUID for ds in study) == sorted(u.sop for u, _ in items)
    assert {ds.file_meta.TransferSyntaxUID for ds in study} == {EXPLICIT_LE}  # the default transfer syntax
    assert sorted(ds.SOPInstanceUID for ds in series) == sorted(u.sop for u, _ in items[:2])
    assert [ds.file_meta.TransferSyntaxUID for ds in as_stored] == [IMPLICIT_LE]
    streaming = DICOMwebClient(url=client.base_url, chunk_size=97)  # boundaries straddle the chunks it reads
    assert sorted(ds.SOPInstanceUID for ds in streaming.iter_study(study_a)) == sorted(u.sop for u, _ in items)

    study_metadata = client.retrieve_study_metadata(study_a)
    assert sorted(values(study_metadata, SOP_UID)) == sorted(u.sop for u, _ in items)
    assert "7FE00010" not in study_metadata[0] and study_metadata[0]["00100020"]["Value"] == ["P-A"]
    mr = items[2][0]
    assert values(client.retrieve_series_metadata(study_a, mr.series), SOP_UID) == [mr.sop]
    instance = client.retrieve_instance_metadata(study_a, mr.series, mr.sop)
    assert instance["00080060"]["Value"] == ["MR"] and instance[SOP_UID]["Value"] == [mr.sop]
    client.set_http_retry_params(retry=False)
    with pytest.raises(requests.HTTPError) as missing:
        client.retrieve_study_metadata(new_uid())
    assert missing.value.response.status_code == 404


def test_methods_the_emulator_lacks_are_501_not_404(loaded):
    client, study_a, items, _ = loaded
    client.set_http_retry_params(retry=False)
    uids = items[0][0]
    for call in (
        lambda: client.retrieve_instance_frames(uids.study, uids.series, uids.sop, frame_numbers=[1]),
        lambda: client.retrieve_instance_rendered(uids.study, uids.series, uids.sop),
    ):
        with pytest.raises(requests.HTTPError) as lacking:
            call()
        error = lacking.value.response.json()["error"]
        assert (error["code"], error["status"]) == (501, "UNIMPLEMENTED")
        assert "is not implemented by the Healthcare API emulator" in error["message"]


def test_delete_instance(loaded):
    client, study_a, items, _ = loaded
    client.set_http_retry_params(retry=False)
    gone, kept = items[0][0], items[1][0]
    assert client.delete_instance(gone.study, gone.series, gone.sop) is None
    assert values(client.search_for_instances(study_a, gone.series), SOP_UID) == [kept.sop]
    (series,) = client.search_for_series(study_a, search_filters={"SeriesInstanceUID": gone.series})
    assert series["00201209"]["Value"] == [1]
    with pytest.raises(requests.HTTPError) as retrieved:
        client.retrieve_instance(gone.study, gone.series, gone.sop)
    assert retrieved.value.response.status_code == 404
    with pytest.raises(requests.HTTPError) as again:
        client.delete_instance(gone.study, gone.series, gone.sop)
    assert again.value.response.status_code == 404

    with pytest.raises(requests.HTTPError) as whole_series:  # a long-running operation in the API
        client.delete_series(study_a, kept.series)
    error = whole_series.value.response.json()["error"]
    assert (error["code"], error["status"]) == (501, "UNIMPLEMENTED") and "dicomStores.studies.series.delete" in error["message"]
    assert values(client.search_for_instances(study_a, kept.series), SOP_UID) == [kept.sop]


def test_date_ranges_and_paging_with_the_standards_warning(web, store, caplog):
    """Issue 11's QIDO: DA ranges (A-B, -B, A-) and pages that say more results are left (Warning: 299)."""
    client = web(store)
    client.set_http_retry_params(retry=False)
    dated = {date: make_series(1, study_date=date)[0] for date in ("20240101", "20240615", "20250101")}
    client.store_instances([dataset_of(data) for _, data in dated.values()])
    study = {date: uids.study for date, (uids, _) in dated.items()}

    def studies(**filters: str) -> list[str]:
        return sorted(values(client.search_for_studies(search_filters=filters), STUDY_UID))

    assert studies(StudyDate="20240101-20241231") == sorted([study["20240101"], study["20240615"]])
    assert studies(StudyDate="-20240101") == [study["20240101"]]
    assert studies(StudyDate="20240616-") == [study["20250101"]]
    with pytest.raises(requests.HTTPError) as reversed_range:
        client.search_for_studies(search_filters={"StudyDate": "20250101-20240101"})
    assert reversed_range.value.response.status_code == 400

    with caplog.at_level(logging.WARNING, logger="dicomweb_client"):
        first_page = client.search_for_studies(limit=2)
    assert len(first_page) == 2
    assert any("299" in record.getMessage() for record in caplog.records)  # the client logs the server's Warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dicomweb_client"):
        every = client.search_for_studies(limit=2, get_remaining=True)
    assert sorted(values(every, STUDY_UID)) == sorted(study.values())
