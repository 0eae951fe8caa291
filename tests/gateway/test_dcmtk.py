"""Interoperability with DCMTK (a client no one here wrote): ``echoscu`` and ``storescu`` against the gateway.

DCMTK comes from the Debian package ``dcmtk``; ``make test`` (and so ``.ci/run``)
installs it when missing. Every DCMTK tool runs with ``TCP_NODELAY=1``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest

from localstack import samples

from .helpers import AE_TITLE, CALLING, certificate, gcs_inbox_factory, make_config, running_gateway, wait_for

pytestmark = pytest.mark.stack


def dcmtk(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool (TCP_NODELAY=1); a missing tool fails the test with the install line."""
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} not found: apt-get install -y dcmtk (make test installs it when missing)")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TCP_NODELAY": "1"})


@pytest.fixture
def gateway(tmp_path: Path, bucket: str, fake_gcs: Any):
    with running_gateway(make_config(tmp_path / "spool", bucket), gcs_inbox_factory(bucket, fake_gcs.url)) as gw:
        yield gw


def test_echoscu(gateway: Any) -> None:
    result = dcmtk("echoscu", "-aet", CALLING, "-aec", AE_TITLE, "127.0.0.1", str(gateway.receiver.port))
    assert result.returncode == 0, result.stderr


def test_storescu_sends_a_study_in_several_transfer_syntaxes(gateway: Any, tmp_path: Path, bucket: str,
                                                               storage_client: Any) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    expected = {}
    study = samples.make_study(3, 3)
    for number, (uids, data) in enumerate(study):
        (folder / f"{number:03d}.dcm").write_bytes(data)
        expected[f"in/{CALLING}/{uids.study}/{uids.series}/{uids.sop}.dcm"] = data
    address = ["-aet", CALLING, "-aec", AE_TITLE, "127.0.0.1", str(gateway.receiver.port)]
    result = dcmtk("storescu", "+sd", *address, str(folder))
    assert result.returncode == 0 and "Store Failed" not in result.stderr, result.stderr
    # Compressed files, each with the storescu option that proposes its transfer syntax (so nothing is converted)
    for bundled, option in (("JPEG2000.dcm", "-xw"), ("SC_rgb_jpeg_dcmtk.dcm", "-xy"), ("MR_small_RLE.dcm", "-xr")):
        uids, data = samples.with_new_uids(samples.bundled_bytes(bundled), study_uid=study[0][0].study)
        (tmp_path / bundled).write_bytes(data)
        expected[f"in/{CALLING}/{uids.study}/{uids.series}/{uids.sop}.dcm"] = data
        result = dcmtk("storescu", option, *address, str(tmp_path / bundled))
        assert result.returncode == 0 and "Store Failed" not in result.stderr, result.stderr
    blobs = wait_for(lambda: (found := {b.name: b for b in storage_client.list_blobs(bucket)})
                     and len(found) == len(expected) and found, what=f"{len(expected)} objects")
    assert set(blobs) == set(expected)
    for name, original in expected.items():
        sent = pydicom.dcmread(io.BytesIO(original))
        stored = pydicom.dcmread(io.BytesIO(blobs[name].download_as_bytes()))
        assert stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert stored.PixelData == sent.PixelData and stored.SOPInstanceUID == sent.SOPInstanceUID


def test_storescu_from_a_disallowed_ae_is_rejected(gateway: Any, tmp_path: Path) -> None:
    (_, data), = samples.make_series(1)
    path = tmp_path / "one.dcm"
    path.write_bytes(data)
    result = dcmtk("storescu", "-aet", "NOT-ALLOWED", "-aec", AE_TITLE, "127.0.0.1", str(gateway.receiver.port),
                   str(path))
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr and "Calling AE Title Not Recognized" in result.stderr
    assert gateway.spool.stats().pending == 0


# storescu proposes a SOP class it does not know only from a profile of its association config file (-xf).
_PRIVATE_PROFILE = """[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LittleEndianExplicit
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[Private]
PresentationContext1 = {uid}\\Uncompressed

[[Profiles]]
[Private]
PresentationContexts = Private
"""


def test_storescu_sends_a_private_sop_class_listed_in_additional_sop_classes(tmp_path: Path, bucket: str,
                                                                              fake_gcs: Any, storage_client: Any) -> None:
    private = "1.3.12.2.1107.5.9.1"  # Siemens CSA Non-Image Storage
    [(uids, data)] = samples.make_series(1)
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = private
    dataset.save_as(tmp_path / "private.dcm")
    (tmp_path / "private.cfg").write_text(_PRIVATE_PROFILE.format(uid=private))
    dicom = (f"dicom:\n  ae_title: {AE_TITLE}\n  address: 127.0.0.1\n  port: 0\n  calling_ae_titles: [{CALLING}]\n"
             f"  additional_sop_classes: ['{private}']\n")
    with running_gateway(make_config(tmp_path / "spool", bucket, dicom=dicom),
                         gcs_inbox_factory(bucket, fake_gcs.url)) as gateway:
        result = dcmtk("storescu", "-xf", str(tmp_path / "private.cfg"), "Private", "-aet", CALLING, "-aec", AE_TITLE,
                       "127.0.0.1", str(gateway.receiver.port), str(tmp_path / "private.dcm"))
        assert result.returncode == 0 and "Store Failed" not in result.stderr, result.stderr
        name = f"in/{CALLING}/{uids.study}/{uids.series}/{uids.sop}.dcm"
        blob = wait_for(lambda: {b.name: b for b in storage_client.list_blobs(bucket)}.get(name), what=name)
    assert pydicom.dcmread(io.BytesIO(blob.download_as_bytes())).SOPClassUID == private


def test_echoscu_and_storescu_over_tls_with_a_client_certificate(tmp_path: Path, bucket: str, fake_gcs: Any,
                                                                 storage_client: Any) -> None:
    """The commands docs/gateway.md gives for DICOM TLS; a client without a certificate gets no association."""
    server_key, server_cert = certificate(tmp_path, "server")
    ca = certificate(tmp_path, "ca")
    client_key, client_cert = certificate(tmp_path, "client", ca=ca)
    tls = f"tls:\n  certificate: {server_cert}\n  private_key: {server_key}\n  client_ca: {ca[1]}\n"
    [(uids, data)] = samples.make_series(1)
    (tmp_path / "one.dcm").write_bytes(data)
    with running_gateway(make_config(tmp_path / "spool", bucket, tls=tls),
                         gcs_inbox_factory(bucket, fake_gcs.url)) as gateway:
        address = ["-aet", CALLING, "-aec", AE_TITLE, "127.0.0.1", str(gateway.receiver.port)]
        with_certificate = ["+tls", str(client_key), str(client_cert), "+cf", str(server_cert)]
        echo = dcmtk("echoscu", *with_certificate, *address)
        assert echo.returncode == 0, echo.stderr
        store = dcmtk("storescu", *with_certificate, *address, str(tmp_path / "one.dcm"))
        assert store.returncode == 0 and "Store Failed" not in store.stderr, store.stderr
        name = f"in/{CALLING}/{uids.study}/{uids.series}/{uids.sop}.dcm"
        wait_for(lambda: storage_client.bucket(bucket).get_blob(name), what=name)
        anonymous = dcmtk("echoscu", "+tla", "+cf", str(server_cert), *address)
        plain = dcmtk("echoscu", *address)
    assert anonymous.returncode != 0 and plain.returncode != 0
