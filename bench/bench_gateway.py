"""The DICOM gateway's throughput beside DCMTK's own receiver, one study sent by ``storescu``.

Rows (every DCMTK tool runs with ``TCP_NODELAY=1``; without it DCMTK waits about
88 ms per instance on loopback):

* (a) gateway, acknowledged: ``storescu`` into the gateway until it exits, i.e.
  every C-STORE answered, so every instance fsynced in the spool;
* (b) gateway, in the inbox: from the same start until the last instance is an
  object in the inbox bucket (fake-gcs-server, memory backend);
* (c) ``storescp -od DIR`` writing each instance to local disk (no fsync): the
  ceiling of this machine for one association;
* (d) with ``--parallel N`` (N > 1): N ``storescu`` at once into the gateway,
  acknowledged, the spool's group commit shared between associations;
* (e) a bare pynetdicom Storage SCP whose handler answers Success without
  storing anything: the library's own ceiling on this machine, so (a) - (e) is
  what the gateway adds (header parse, file meta, CRC, write, fdatasync, log);
* (f) the gateway again, its destination bucket missing, so no upload runs
  beside the receiving (uploads fail and back off): its receive path alone.

Instances/s and MB/s (MB = 10^6 bytes of the Part 10 files sent), and (a)/(c).
The machine's load average is printed before and after: figures taken while
other work runs on the machine say little.

    .venv/bin/python bench/bench_gateway.py [--instances 500] [--rows 512 --cols 512] [--parallel 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from localstack import samples  # noqa: E402
from localstack.ports import free_ports, port_is_open  # noqa: E402
from localstack.services import start_fake_gcs  # noqa: E402

CALLING, CALLED, BUCKET = "BENCH-SCU", "DICOM-GCS", "bench-inbox"
NODELAY = {**os.environ, "TCP_NODELAY": "1"}


def write_study(folder: Path, instances: int, rows: int, cols: int, series: int = 5) -> int:
    """A synthetic CT study in ``folder``; total bytes."""
    folder.mkdir(parents=True)
    total = 0
    per_series = -(-instances // series)
    study = samples.make_study(series, per_series, rows=rows, cols=cols)[:instances]
    for number, (_, data) in enumerate(study):
        (folder / f"{number:05d}.dcm").write_bytes(data)
        total += len(data)
    return total


def storescu(port: int, folders: list[Path], called: str = CALLED) -> float:
    """One ``storescu +sd`` per folder, all at once; seconds until the last exits (each must succeed)."""
    started = time.perf_counter()
    processes = [subprocess.Popen(["storescu", "+sd", "-aet", CALLING, "-aec", called, "127.0.0.1", str(port),
                                   str(folder)], env=NODELAY, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for folder in folders]
    for process in processes:
        _, err = process.communicate(timeout=3600)
        if process.returncode != 0 or "Store Failed" in err:
            raise SystemExit(f"storescu failed: {err[-2000:]}")
    return time.perf_counter() - started


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_is_open(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"nothing listens on port {port} after {timeout} s")
        time.sleep(0.05)


def dcmtk_ceiling(study: Path, workdir: Path) -> float:
    out = workdir / "storescp-out"
    out.mkdir()
    (port,) = free_ports(1)
    process = subprocess.Popen(["storescp", "-od", str(out), "+xa", str(port)], env=NODELAY,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        seconds = storescu(port, [study], called="ANY-SCP")
    finally:
        process.terminate()
        process.wait(timeout=10)
    received = len(list(out.iterdir()))
    expected = len(list(study.iterdir()))
    if received != expected:
        raise SystemExit(f"storescp wrote {received} files, expected {expected}")
    return seconds


BARE_SCP = """
import sys
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
ae = AE(ae_title=sys.argv[2])
ae.maximum_pdu_size = 65536
for context in AllStoragePresentationContexts:
    ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
"""


def pynetdicom_ceiling(study: Path) -> float:
    (port,) = free_ports(1)
    process = subprocess.Popen([sys.executable, "-c", BARE_SCP, str(port), CALLED], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        return storescu(port, [study])
    finally:
        process.terminate()
        process.wait(timeout=10)


def healthz(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return json.load(response)


def start_gateway(workdir: Path, storage_url: str, processes: int,
                  bucket: str = BUCKET) -> tuple[subprocess.Popen, int, int]:
    dicom_port, health_port = free_ports(2)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "gateway.yaml"
    config.write_text(
        f"dicom:\n  ae_title: {CALLED}\n  address: 127.0.0.1\n  port: {dicom_port}\n"
        f"  calling_ae_titles: [{CALLING}]\n  max_associations: 32\n"
        f"destination: gs://{bucket}/bench/\n"
        f"spool:\n  directory: {workdir / 'spool'}\n  max_megabytes: 100000\n"
        f"uploads:\n  threads: 4\n  processes: {processes}\n  max_backoff_seconds: 1\n"
        f"health:\n  address: 127.0.0.1\n  port: {health_port}\n  stats_every_seconds: 3600\n"
    )
    env = {**os.environ, "STORAGE_EMULATOR_HOST": storage_url, "GOOGLE_CLOUD_PROJECT": "bench",
           "PYTHONPATH": str(ROOT)}
    log = open(workdir / "gateway.log", "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(config)], env=env, cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT)
    wait_port(dicom_port)
    return process, dicom_port, health_port


def gateway_runs(study: Path, parts: list[Path], workdir: Path, expected: int, processes: int) -> dict[str, float]:
    gcs = start_fake_gcs(workdir / "gcs")
    process = None
    try:
        request = urllib.request.Request(f"{gcs.url}/storage/v1/b?project=bench", method="POST",
                                         data=json.dumps({"name": BUCKET}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).close()
        process, dicom_port, health_port = start_gateway(workdir, gcs.url, processes)
        started = time.perf_counter()
        acknowledged = storescu(dicom_port, [study])
        while healthz(health_port)["pending"]:
            time.sleep(0.01)
        landed = time.perf_counter() - started
        listed = json.load(urllib.request.urlopen(
            f"{gcs.url}/storage/v1/b/{BUCKET}/o?prefix=bench/&maxResults=100000", timeout=60)).get("items", [])
        if len(listed) != expected:
            raise SystemExit(f"{len(listed)} objects in the inbox, expected {expected}")
        results = {"a": acknowledged, "b": landed}
        before = healthz(health_port)
        results["a_per_flush"] = before["appended"] / max(1, before["flushes"])
        if len(parts) > 1:
            results["d"] = storescu(dicom_port, parts)  # identical re-sends: spooled again, not uploaded again
            after = healthz(health_port)
            results["d_per_flush"] = ((after["appended"] - before["appended"])
                                      / max(1, after["flushes"] - before["flushes"]))
        process.terminate()
        process.wait(timeout=30)
        process, dicom_port, _ = start_gateway(workdir / "no-uploads", gcs.url, processes, bucket="no-such-bucket")
        results["f"] = storescu(dicom_port, [study])
        return results
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        gcs.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--rows", type=int, default=512, help="pixel rows of each instance (512: a CT slice)")
    parser.add_argument("--cols", type=int, default=512)
    parser.add_argument("--parallel", type=int, default=4, help="associations at once for row (d); 1: no row (d)")
    parser.add_argument("--upload-processes", type=int, default=2, help="the gateway's uploads.processes")
    args = parser.parse_args(argv)
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install -y dcmtk")

    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    try:
        study = workdir / "study"
        total = write_study(study, args.instances, args.rows, args.cols)
        files = sorted(study.iterdir())
        parts = []
        for index in range(max(1, args.parallel)):
            part = workdir / f"part-{index}"
            part.mkdir()
            for path in files[index::args.parallel]:
                os.link(path, part / path.name)
            parts.append(part)
        ceiling = dcmtk_ceiling(study, workdir)
        gateway = gateway_runs(study, parts, workdir, len(files), args.upload_processes)
        bare = pynetdicom_ceiling(study)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()

    rows = [
        ("(a) gateway, acknowledged (fsynced in the spool)", gateway["a"]),
        ("(b) gateway, last instance in the inbox bucket", gateway["b"]),
        ("(c) DCMTK storescp -od, local disk (no fsync)", ceiling),
    ]
    if "d" in gateway:
        rows.append((f"(d) gateway, {args.parallel} associations at once, acknowledged", gateway["d"]))
    rows.append(("(e) bare pynetdicom SCP, acknowledges without storing", bare))
    rows.append(("(f) gateway, acknowledged, no upload running beside it", gateway["f"]))
    size = f"{args.rows}x{args.cols}"
    print(f"{len(files)} instances ({size} 16-bit CT, {total / len(files) / 1e3:.0f} kB each, {total / 1e6:.1f} MB), "
          f"storescu with TCP_NODELAY=1, uploads.processes {args.upload_processes}, {os.cpu_count()} CPUs, load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f}")
    print(f"{'':<58} {'seconds':>8} {'inst/s':>8} {'MB/s':>8}")
    for label, seconds in rows:
        print(f"{label:<58} {seconds:>8.2f} {len(files) / seconds:>8.1f} {total / 1e6 / seconds:>8.1f}")
    flushes = f"records per fdatasync: (a) {gateway['a_per_flush']:.2f}"
    if "d_per_flush" in gateway:
        flushes += f", (d) {gateway['d_per_flush']:.2f} (group commit shared between associations)"
    print(flushes)
    print(f"(a)/(c) = {ceiling / gateway['a']:.2f} (aim: at least 0.5); (e)/(c) = {ceiling / bare:.2f} "
          f"(the most any pynetdicom receiver can reach here); (a)/(e) = {bare / gateway['a']:.2f}; "
          f"(f)/(e) = {bare / gateway['f']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
