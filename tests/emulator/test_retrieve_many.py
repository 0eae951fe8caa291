"""WADO-RS RetrieveStudy, RetrieveSeries and RetrieveMetadata; methods the emulator lacks are 501."""

from localstack.samples import make_series, new_uid
from tests.emulator.client import Api, StoreRef, assert_google_error, counter


def test_study_and_series_as_multipart_and_metadata(api: Api, store: StoreRef, upload):
    study = new_uid()
    items = make_series(2, study_uid=study) + make_series(1, study_uid=study, series_number=2)
    for uids, data in items:
        upload(f"m/{uids.sop}.dcm", data)
    assert counter(api.import_and_wait(store, upload("m/x", b"").rsplit("/", 1)[0] + "/*.dcm")) == {"success": "3"}

    whole = api.call("GET", f"{store.web}/studies/{study}", headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert whole.status_code == 200, whole.text
    boundary = whole.headers["Content-Type"].split("boundary=")[1]
    assert whole.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert whole.content.count(f"--{boundary}\r\n".encode()) == 3 and whole.content.endswith(f"--{boundary}--\r\n".encode())
    assert all(data in whole.content for _, data in items)  # as stored

    second = items[2][0]
    one_series = api.call("GET", f"{store.web}/studies/{study}/series/{second.series}")
    assert one_series.content.count(b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n") == 1
    single = api.call("GET", f"{store.web}/studies/{study}", headers={"Accept": "application/dicom"})
    assert_google_error(single, 406, "INVALID_ARGUMENT", "no supported media type found in [application/dicom]")
    assert_google_error(api.call("GET", f"{store.web}/studies/{study}/series/{new_uid()}"), 404, "NOT_FOUND", "/series/")

    metadata = api.call("GET", f"{store.web}/studies/{study}/metadata")
    assert metadata.headers["Content-Type"] == "application/dicom+json"
    assert sorted(m["00080018"]["Value"][0] for m in metadata.json()) == sorted(u.sop for u, _ in items)
    assert "7FE00010" not in metadata.json()[0]
    path = f"{store.web}/studies/{study}/series/{second.series}/instances/{second.sop}/metadata"
    assert [m["00200013"]["Value"] for m in api.call("GET", path).json()] == [[1]]


def test_discovery_methods_the_emulator_lacks_are_501(api: Api, store: StoreRef):
    frames = api.call("GET", f"{store.web}/studies/1.2/series/3.4/instances/5.6/frames/1")
    assert_google_error(frames, 501, "UNIMPLEMENTED", "dicomStores.studies.series.instances.frames.retrieveFrames")
    metrics = api.call("GET", f"{store.web}/studies/1.2:getStudyMetrics")  # not read as RetrieveStudy of "1.2:get..."
    assert_google_error(metrics, 501, "UNIMPLEMENTED", "dicomStores.dicomWeb.studies.getStudyMetrics")
    assert_google_error(api.call("POST", f"{store.dataset}:deidentify", json={}), 501, "UNIMPLEMENTED", "datasets.deidentify")
