"""STOW-RS: the request forms the emulator accepts, the answer's shape, and what it refuses."""

from localstack.samples import make_instance, make_series, new_uid
from tests.emulator.client import Api, StoreRef, assert_google_error

BOUNDARY = "b0undary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'


def multipart(*parts: bytes, headers: bool = True) -> bytes:
    head = b"Content-Type: application/dicom\r\n" if headers else b""
    body = b"".join(f"--{BOUNDARY}\r\n".encode() + head + b"\r\n" + part + b"\r\n" for part in parts)
    return body + f"--{BOUNDARY}--\r\n".encode()


def stow(api: Api, store: StoreRef, body: bytes, content_type: str = MULTIPART, path: str = "studies", **headers: str):
    return api.call("POST", f"{store.web}/{path}", data=body, headers={"Content-Type": content_type, **headers})


def test_json_answer_lists_stored_and_failed_instances(api, store):
    (uids, data), (other, other_data) = make_series(2)
    calls_before = api.stats().get("dicomStores.storeInstances", 0)
    first = stow(api, store, multipart(data, other_data, headers=False), Accept="application/dicom+json")
    assert first.status_code == 200 and first.headers["Content-Type"] == "application/dicom+json"
    base = f"{api.url}/v1/{store.web}"
    assert first.json() == {
        "00081190": {"vr": "UR", "Value": [f"{base}/studies/{uids.study}"]},
        "00081199": {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
             "00081155": {"vr": "UI", "Value": [u.sop]},
             "00081190": {"vr": "UR", "Value": [f"{base}{u.path}"]}} for u in (uids, other)
        ]},
    }
    assert api.sop_uids(store) == {uids.sop, other.sop}
    assert api.stats()["dicomStores.storeInstances"] == calls_before + 1

    (_, new_data), = make_series(1, study_uid=uids.study)
    mixed = stow(api, store, multipart(b"not dicom", new_data), path=f"studies/{uids.study}", Accept="application/json")
    assert mixed.status_code == 202
    (failed,) = mixed.json()["00081198"]["Value"]
    assert failed["00081197"] == {"vr": "US", "Value": [272]}
    assert failed["00090010"] == {"vr": "LO", "Value": ["GOOGLE"]}
    assert "not a DICOM file" in failed["00091097"]["Value"][0]
    assert len(mixed.json()["00081199"]["Value"]) == 1


def test_an_answer_where_every_instance_failed_has_the_study_and_google_s_failed_item(api, store):
    """Google's 409 (dcmjs issue #249, POST .../studies): RetrieveURL of the study; FailureReason and FailureDetail."""
    (uids, data), = make_series(1)
    assert stow(api, store, data, "application/dicom").status_code == 200
    changed = make_instance(uids.study, uids.series, uids.sop, patient_id="SOMEONE-ELSE")
    conflict = stow(api, store, multipart(changed), Accept="application/dicom+json")
    assert conflict.status_code == 409
    answer = conflict.json()
    assert answer["00081190"] == {"vr": "UR", "Value": [f"{api.url}/v1/{store.web}/studies/{uids.study}"]}
    (failed,) = answer["00081198"]["Value"]
    assert set(failed) == {"00081197", "00090010", "00091097"}, "no Referenced SOP UIDs, as the body seen from Google"
    assert "checksum mismatch" in failed["00091097"]["Value"][0] and uids.sop in failed["00091097"]["Value"][0]
    unread = stow(api, store, multipart(b"not dicom"), Accept="application/dicom+json")
    assert unread.status_code == 409 and "00081190" not in unread.json(), "no study known, no RetrieveURL"


def test_single_part_body_and_xml_answer(api, store):
    uids, data = make_series(1)[0]
    response = stow(api, store, data, "application/dicom")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/dicom+xml"  # no Accept: XML, as the real API
    assert response.text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<NativeDicomModel>')
    assert f'<DicomAttribute tag="00081155" vr="UI" keyword="ReferencedSOPInstanceUID"><Value number="1">{uids.sop}' in response.text
    conflict = stow(api, store, make_series(1, study_uid=uids.study, series_uid=uids.series)[0][1], "application/dicom",
                    path=f"studies/{new_uid()}")
    assert conflict.status_code == 409 and "is not in study" in conflict.text


def test_refused_requests(api, store):
    (_, data), = make_series(1)
    assert_google_error(stow(api, store, data, "application/octet-stream"), 400, "INVALID_ARGUMENT", "multipart/related")
    assert_google_error(stow(api, store, b"", "application/dicom"), 400, "INVALID_ARGUMENT", "empty")
    assert_google_error(stow(api, store, multipart(data), 'multipart/related; type="application/dicom"'), 400,
                        "INVALID_ARGUMENT", "boundary")
    assert_google_error(stow(api, store, multipart(data)[:-20]), 400, "INVALID_ARGUMENT", "truncated")
    assert_google_error(stow(api, store, f"--{BOUNDARY}--\r\n".encode()), 400, "INVALID_ARGUMENT", "no part")
    assert_google_error(stow(api, store, multipart(data), "multipart/related; type=\"application/dicom\"; "
                             "boundary*=UTF-8''%E2%82%AC"), 400, "INVALID_ARGUMENT", "not ASCII")
    assert_google_error(stow(api, store, b"x", 'multipart/related; type="application/dicom+xml"; boundary=x'), 501,
                        "UNIMPLEMENTED", "metadata and bulk data")
    assert api.sop_uids(store) == set()
