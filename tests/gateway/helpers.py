"""Helpers for the gateway tests: configs, an in-process gateway, a pynetdicom SCU, log capture."""

from __future__ import annotations

import io
import json
import subprocess
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

from gateway.config import GatewayConfig, parse
from gateway.inbox import GcsInbox, Inbox
from gateway.service import Gateway
from tests.logcapture import log_stream

AE_TITLE = "GW-TEST"
CALLING = "MODALITY1"


def config_text(spool_dir: Path, bucket: str, **sections: str) -> str:
    """A gateway config on free ports (0), fast stats; ``sections`` replace whole top-level blocks."""
    blocks = {
        "dicom": f"dicom:\n  ae_title: {AE_TITLE}\n  address: 127.0.0.1\n  port: 0\n  calling_ae_titles: [{CALLING}]\n",
        "destination": f"destination: gs://{bucket}/in/\n",
        "spool": f"spool:\n  directory: {spool_dir}\n  max_megabytes: 64\n  segment_megabytes: 1\n",
        "uploads": "uploads:\n  threads: 2\n  max_backoff_seconds: 0.5\n",
        "health": "health:\n  address: 127.0.0.1\n  port: 0\n  stuck_after_seconds: 30\n  stats_every_seconds: 0.5\n",
    }
    blocks.update(sections)
    return "".join(blocks.values())


def make_config(spool_dir: Path, bucket: str, **sections: str) -> GatewayConfig:
    return parse(config_text(spool_dir, bucket, **sections), "gateway-test.yaml", {})


class FakeClock:
    """A wall clock that stands still at ``now`` (epoch seconds) until a test moves it, back as well as forward."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextmanager
def running_gateway(config: GatewayConfig, inbox_factory: Callable[[], Inbox]) -> Iterator[Gateway]:
    gateway = Gateway(config, inbox_factory=inbox_factory)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def gcs_inbox_factory(bucket: str, endpoint: str) -> Callable[[], Inbox]:
    """Picklable, as the uploads run in helper processes (``uploads.processes``, default 2)."""
    return partial(GcsInbox, bucket, endpoint=endpoint)


@contextmanager
def captured_logs() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """JSON log lines written meanwhile, parsed (the gateway runs in this process)."""
    with log_stream() as stream:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def storage_contexts(datasets: list[Any]) -> list[Any]:
    """Requested presentation contexts for the SOP classes and transfer syntaxes of ``datasets``."""
    from pynetdicom import build_context

    pairs = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    return [build_context(sop_class, [syntax]) for sop_class, syntax in sorted(pairs)]


def send(port: int, datasets: list[Any], *, calling: str = CALLING, called: str = AE_TITLE,
         tls: Any = None) -> list[int]:
    """Associate, C-STORE each dataset, release; the status of each (-1: no response)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    assoc = ae.associate("127.0.0.1", port, contexts=storage_contexts(datasets), ae_title=called, tls_args=tls)
    assert assoc.is_established, f"association not established (rejected={assoc.is_rejected})"
    statuses = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else -1)
    finally:
        assoc.release()
    return statuses


def read_dataset(data: bytes) -> Any:
    import pydicom

    return pydicom.dcmread(io.BytesIO(data))


def certificate(folder: Path, name: str, ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
    """A key and certificate for CN=localhost (self-signed, or signed by ``ca``), made with the openssl CLI."""
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    if ca is None:
        command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                   "-out", str(cert), *subject]
        subprocess.run(command, check=True, capture_output=True)
    else:
        request = folder / f"{name}.csr"
        subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(request), "-subj", f"/CN={name}"], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", str(request), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
                        "-CAcreateserial", "-days", "1", "-out", str(cert)], check=True, capture_output=True)
    return key, cert
