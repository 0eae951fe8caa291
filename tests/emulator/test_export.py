"""dicomStores.export to Cloud Storage: formats, layout, filter files, errors."""

import struct
import zlib
from io import BytesIO

import numpy as np
import pydicom
import pytest

from localstack.samples import InstanceUids, bundled_bytes, make_instance, make_series, new_uid, with_new_uids
from tests.emulator.client import Api, StoreRef, assert_google_error, counter


def load(api: Api, store: StoreRef, upload, items: list[tuple[InstanceUids, bytes]]) -> None:
    """Import ``items`` into ``store`` through a real import."""
    uri = ""
    for uids, data in items:
        uri = upload(f"src/{uids.sop}.dcm", data)
    done = api.import_and_wait(store, uri.rsplit("/", 1)[0] + "/*.dcm")
    assert counter(done) == {"success": str(len(items))}, done


def objects(bucket, prefix: str = "") -> dict[str, bytes]:
    return {blob.name: blob.download_as_bytes() for blob in bucket.list_blobs(prefix=prefix)}


def decode_png(data: bytes) -> np.ndarray:
    """A minimal PNG reader (8-bit gray or RGB, filter 0), to check the emulator's output."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, header, idat = 8, b"", b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind, payload = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert crc == zlib.crc32(kind + payload) & 0xFFFFFFFF
        header = payload if kind == b"IHDR" else header
        idat += payload if kind == b"IDAT" else b""
        offset += 12 + length
    cols, rows, depth, color = struct.unpack(">IIBB", header[:10])
    channels = {0: 1, 2: 3}[color]
    assert depth == 8
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(rows, 1 + cols * channels)
    assert not raw[:, 0].any()  # filter type 0 on every line
    return raw[:, 1:].reshape((rows, cols) if channels == 1 else (rows, cols, 3))


def test_export_everything_as_stored_with_the_documented_layout(api, store, upload, bucket):
    items = make_series(3)
    load(api, store, upload, items)
    started = api.start_export(store, {"gcsDestination": {"uriPrefix": f"gs://{bucket.name}/out"}})
    assert started["metadata"]["apiMethodName"] == "google.cloud.healthcare.v1.dicom.DicomService.ExportDicomData"
    done = api.wait(started)
    assert done["response"] == {"@type": "type.googleapis.com/google.cloud.healthcare.v1.dicom.ExportDicomDataResponse"}
    assert counter(done) == {"success": "3"}
    expected = {f"out/{u.study}/{u.series}/{u.sop}.dcm": data for u, data in items}  # "/" appended to the prefix
    assert objects(bucket, "out/") == expected


def test_export_overwrites_and_accepts_a_bare_bucket(api, store, upload, bucket):
    items = make_series(1)
    load(api, store, upload, items)
    uids, data = items[0]
    bucket.blob(f"{uids.study}/{uids.series}/{uids.sop}.dcm").upload_from_string(b"old")
    done = api.wait(api.start_export(store, {"gcsDestination": {"uriPrefix": f"gs://{bucket.name}"}}))
    assert counter(done) == {"success": "1"}
    assert bucket.blob(f"{uids.study}/{uids.series}/{uids.sop}.dcm").download_as_bytes() == data


def test_explicit_vr_little_endian_transcodes_and_compressed_sources_fail_per_instance(api, store, upload, bucket):
    implicit_uids, implicit = with_new_uids(bundled_bytes("MR_small_implicit.dcm"))
    rle_uids, rle = with_new_uids(bundled_bytes("MR_small_RLE.dcm"))
    jpeg_uids, jpeg = with_new_uids(bundled_bytes("JPEG-lossy.dcm"))
    load(api, store, upload, [(implicit_uids, implicit), (rle_uids, rle), (jpeg_uids, jpeg)])
    body = {"gcsDestination": {"uriPrefix": f"gs://{bucket.name}/le/",
                               "mimeType": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"}}
    done = api.wait(api.start_export(store, body))
    assert counter(done) == {"success": "2", "failure": "1"}
    assert done["error"]["code"] == 3  # partial failure, default style
    written = objects(bucket, "le/")
    assert set(written) == {f"le/{u.study}/{u.series}/{u.sop}.dcm" for u in (implicit_uids, rle_uids)}
    for uids, source in ((implicit_uids, implicit), (rle_uids, rle)):
        out = pydicom.dcmread(BytesIO(written[f"le/{uids.study}/{uids.series}/{uids.sop}.dcm"]))
        assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert out.SOPInstanceUID == uids.sop
        assert np.array_equal(out.pixel_array, pydicom.dcmread(BytesIO(source)).pixel_array)
    errors = [e for e in api.logs(done) if e["severity"] == "ERROR" and e.get("instance")]
    assert [e["instance"] for e in errors] == [jpeg_uids.path]
    assert "cannot transcode" in errors[0]["message"] and "transfer-syntax=*" in errors[0]["message"]


def test_png_renders_frames(api, store, upload, bucket):
    single = make_series(1, rows=4, cols=5)
    multi_uids, multi = with_new_uids(bundled_bytes("SC_rgb_rle_2frame.dcm"))
    load(api, store, upload, single + [(multi_uids, multi)])
    done = api.wait(api.start_export(store, {"gcsDestination": {"uriPrefix": f"gs://{bucket.name}/png",
                                                                 "mimeType": "image/png"}}))
    assert counter(done) == {"success": "2"}
    written = objects(bucket, "png/")
    uids = single[0][0]
    image = decode_png(written[f"png/{uids.study}/{uids.series}/{uids.sop}.png"])
    assert image.shape == (4, 5) and image.min() == 0 and image.max() == 255
    base = f"png/{multi_uids.study}/{multi_uids.series}/{multi_uids.sop}"
    assert {n for n in written if n.startswith(base)} == {f"{base}/1.png", f"{base}/2.png"}
    frames = pydicom.dcmread(BytesIO(multi)).pixel_array
    assert np.array_equal(decode_png(written[f"{base}/2.png"]), frames[1].astype(np.uint8))


def test_octet_stream_writes_raw_pixel_data_without_extension(api, store, upload, bucket):
    items = make_series(1)
    load(api, store, upload, items)
    body = {"gcsDestination": {"uriPrefix": f"gs://{bucket.name}/raw", "mimeType": "application/octet-stream; transfer-syntax=*"}}
    assert counter(api.wait(api.start_export(store, body))) == {"success": "1"}
    uids, data = items[0]
    assert objects(bucket, "raw/") == {f"raw/{uids.study}/{uids.series}/{uids.sop}": pydicom.dcmread(BytesIO(data)).PixelData}


def test_instances_without_pixels_fail_for_images(api, store, upload, bucket):
    sr_uids, sr = with_new_uids(bundled_bytes("test-SR.dcm"))
    load(api, store, upload, [(sr_uids, sr)])
    done = api.wait(api.start_export(store, {"gcsDestination": {"uriPrefix": f"gs://{bucket.name}/x", "mimeType": "image/png"}}))
    assert counter(done) == {"failure": "1"} and done["error"]["code"] == 3
    assert any("no pixel data" in e["message"] for e in api.logs(done))


def test_filter_file_selects_studies_series_and_instances(api, store, upload, bucket):
    study_a = make_series(2)
    series_b = make_series(2)
    other_series_b = make_series(1, study_uid=series_b[0][0].study)
    instances_c = make_series(3)
    load(api, store, upload, study_a + series_b + other_series_b + instances_c)
    a, b, c = study_a[0][0], series_b[0][0], instances_c[1][0]
    lines = [f"/studies/{a.study}", "", f"/studies/{b.study}/series/{b.series}", f"  {c.path}  ",
             "/studies/1.2.3.999", ""]
    filter_uri = upload("filters/export.txt", "\r\n".join(lines).encode())
    done = api.wait(api.start_export(store, {"gcsDestination": {"uriPrefix": f"gs://{bucket.name}/f/"},
                                             "filterConfig": {"resourcePathsGcsUri": filter_uri}}))
    chosen = study_a + series_b + [instances_c[1]]
    assert counter(done) == {"success": str(len(chosen))} and "response" in done
    assert set(objects(bucket, "f/")) == {f"f/{u.study}/{u.series}/{u.sop}.dcm" for u, _ in chosen}
    warnings = [e for e in api.logs(done) if e["severity"] == "WARNING"]
    assert len(warnings) == 1 and "/studies/1.2.3.999" in warnings[0]["message"]


def test_bad_filter_line_fails_the_operation_naming_line_and_content(api, store, upload, bucket):
    load(api, store, upload, make_series(1))
    filter_uri = upload("filters/bad.txt", b"/studies/1.2\n\n/study/1.2.3/series/4\n")
    done = api.wait(api.start_export(store, {"gcsDestination": {"uriPrefix": f"gs://{bucket.name}/bad/"},
                                             "filterConfig": {"resourcePathsGcsUri": filter_uri}}))
    assert done["error"]["code"] == 3
    assert "line 3" in done["error"]["message"] and "'/study/1.2.3/series/4'" in done["error"]["message"]
    assert objects(bucket, "bad/") == {}


def test_missing_filter_file_and_missing_bucket_fail_the_operation(api, store, upload, bucket):
    load(api, store, upload, make_series(1))
    done = api.wait(api.start_export(store, {"gcsDestination": {"uriPrefix": f"gs://{bucket.name}/m/"},
                                             "filterConfig": {"resourcePathsGcsUri": f"gs://{bucket.name}/absent.txt"}}))
    assert done["error"]["code"] == 5 and "absent.txt" in done["error"]["message"]
    done = api.wait(api.start_export(store, {"gcsDestination": {"uriPrefix": "gs://no-such-export-bucket/x"}}))
    assert done["error"]["code"] == 5 and "gs://no-such-export-bucket" in done["error"]["message"]


def test_empty_store_exports_nothing_successfully(api, store, bucket):
    done = api.wait(api.start_export(store, {"gcsDestination": {"uriPrefix": f"gs://{bucket.name}/e"}}))
    assert "response" in done and counter(done) == {}


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"bigqueryDestination": {"tableUri": "bq://p.d.t"}}, "INVALID_ARGUMENT", "not supported by the emulator"),
        ({"gcsDestination": {}}, "INVALID_ARGUMENT", "uriPrefix is required"),
        ({"gcsDestination": {"uriPrefix": "/tmp/out"}}, "INVALID_ARGUMENT", "must start with gs://"),
        ({"gcsDestination": {"uriPrefix": "gs://bucket-x/o", "mimeType": "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"}},
         "INVALID_ARGUMENT", "not supported by the emulator"),
        ({"gcsDestination": {"uriPrefix": "gs://bucket-x/o"}, "filterConfig": {"resourcePathsGcsUri": "gs://bucket-x"}},
         "INVALID_ARGUMENT", "names no object"),
    ],
)
def test_invalid_export_requests_are_400(api, store, body, status, fragment):
    assert_google_error(api.call("POST", f"{store.name}:export", json=body), 400, status, fragment)


def test_mime_type_spelling_is_normalized(api, store, upload, bucket):
    load(api, store, upload, make_series(1))
    body = {"gcsDestination": {"uriPrefix": f"gs://{bucket.name}/n", "mimeType": 'Application/DICOM;transfer-syntax="*"'}}
    assert counter(api.wait(api.start_export(store, body))) == {"success": "1"}


def test_export_is_counted_and_cancellable(api, store, upload, bucket, faults):
    load(api, store, upload, [(InstanceUids(s, se, so), make_instance(s, se, so)) for s, se, so in
                              [(new_uid(), new_uid(), new_uid()) for _ in range(2)]])
    faults({"methods": {"dicomStores.export": {"minOperationSeconds": 30}}})
    before = api.stats().get("dicomStores.export", 0)
    started = api.start_export(store, {"gcsDestination": {"uriPrefix": f"gs://{bucket.name}/c"}})
    assert api.stats()["dicomStores.export"] == before + 1
    api.ok("POST", f"{started['name']}:cancel")
    assert api.wait(started, timeout=5)["error"]["code"] == 1
