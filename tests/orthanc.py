"""Orthanc (a PACS no one here wrote) as a judge: a modality for the gateway, a DICOMweb client for the emulator.

Debian's packages ``orthanc`` and ``orthanc-dicomweb`` (``make test`` and
``.ci/run`` install them when missing); each test runs its own Orthanc on free
ports with its storage under the test's folder, and talks to it over its REST API.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from localstack.ports import free_ports

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AE_TITLE = "ORTHANC"


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: its REST API and its DICOM port."""

    url: str
    dicom_port: int

    def post(self, path: str, body: Any) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body)
        response = requests.post(f"{self.url}{path}", data=data, timeout=120)
        assert response.ok, f"Orthanc {path}: {response.status_code} {response.text}"
        return response.json()

    def get(self, path: str) -> Any:
        return json.loads(self.content(path))

    def content(self, path: str) -> bytes:
        response = requests.get(f"{self.url}{path}", timeout=30)
        assert response.ok, f"Orthanc {path}: {response.status_code} {response.text}"
        return response.content


@contextmanager
def running_orthanc(folder: Path, **settings: Any) -> Iterator[Orthanc]:
    """Orthanc with ``settings`` added to its configuration (``DicomModalities``, ``DicomWeb``, ``Plugins``...)."""
    binary = shutil.which("Orthanc")
    if binary is None:
        pytest.fail("Orthanc not found: apt-get install -y orthanc orthanc-dicomweb (make test installs them)")
    http_port, dicom_port = free_ports(2)
    config = {"Name": "judge", "StorageDirectory": str(folder / "orthanc"), "IndexDirectory": str(folder / "orthanc"),
              "DicomAet": AE_TITLE, "DicomPort": dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "Plugins": [], **settings}
    (folder / "orthanc.json").write_text(json.dumps(config))
    with open(folder / "orthanc.log", "w") as log:
        process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
        server = Orthanc(f"http://127.0.0.1:{http_port}", dicom_port)
        try:
            _wait_until_answering(server, process, folder / "orthanc.log")
            yield server
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:  # not left holding its ports for the rest of the run
                process.kill()
                process.wait()


def _wait_until_answering(server: Orthanc, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"Orthanc exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            if requests.get(f"{server.url}/system", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    pytest.fail(f"Orthanc did not answer within {timeout} s: {log.read_text()[-2000:]}")
