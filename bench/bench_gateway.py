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
  beside the receiving (uploads fail and back off): its receive path alone;
* (g) (a) with ``dicom.reactor_wakeups: false``: pynetdicom's reactors only poll
  (1 ms sleeps), as before gateway/wakeups.py;
* (h) (e) with the wake-ups of gateway/wakeups.py installed.

Then what one association costs before its first instance, as for a modality that
opens one per instance: ``echoscu`` (associate, C-ECHO, release; the process
start included) into the gateway and into ``storescp``, and, in this process, the
per-association copy of the gateway's supported contexts as pynetdicom makes it
(``deepcopy``) against gateway/contexts.py's.

(a)-(f) run with the wake-ups (the gateway's default), so (a)/(g) and (h)/(e)
are what they gain, measured in the same run.

Instances/s and MB/s (MB = 10^6 bytes of the Part 10 files sent), and ratios.
The machine's load average is printed before and after: figures taken while
other work runs on the machine say little. ``--repeat N`` runs every row N
times and prints the median, with the lowest and highest, of each.

    .venv/bin/python bench/bench_gateway.py [--instances 500] [--rows 512 --cols 512] [--parallel 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def association_seconds(port: int, called: str, times: int = 20) -> float:
    """Median seconds of one ``echoscu`` run: associate, C-ECHO, release (its process start included)."""
    durations = []
    for _ in range(times):
        started = time.perf_counter()
        subprocess.run(["echoscu", "-aet", CALLING, "-aec", called, "127.0.0.1", str(port)], env=NODELAY,
                       check=True, capture_output=True, timeout=60)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def context_copy_seconds(times: int = 20) -> tuple[float, float]:
    """Seconds per copy of the gateway's supported contexts: pynetdicom's ``deepcopy``, and the shared-UID copy."""
    import copy

    from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts

    from gateway.contexts import SharedUidContexts

    ae = AE()
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    seconds = []
    for contexts in (ae.supported_contexts, SharedUidContexts(ae.supported_contexts)):
        started = time.perf_counter()
        for _ in range(times):
            copy.deepcopy(contexts)
        seconds.append((time.perf_counter() - started) / times)
    return seconds[0], seconds[1]


def dcmtk_ceiling(study: Path, workdir: Path) -> tuple[float, float]:
    """Seconds to send the study into ``storescp``, and one association's seconds (:func:`association_seconds`)."""
    out = workdir / "storescp-out"
    out.mkdir(parents=True)
    (port,) = free_ports(1)
    process = subprocess.Popen(["storescp", "-od", str(out), "+xa", str(port)], env=NODELAY,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        seconds = storescu(port, [study], called="ANY-SCP")
        association = association_seconds(port, "ANY-SCP")
    finally:
        process.terminate()
        process.wait(timeout=10)
    received = len(list(out.iterdir()))
    expected = len(list(study.iterdir()))
    if received != expected:
        raise SystemExit(f"storescp wrote {received} files, expected {expected}")
    return seconds, association


BARE_SCP = """
import sys
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
if sys.argv[3] == "wakeups":
    from gateway import wakeups
    assert wakeups.install()
ae = AE(ae_title=sys.argv[2])
ae.maximum_pdu_size = 65536
for context in AllStoragePresentationContexts:
    ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
"""


def pynetdicom_ceiling(study: Path, wakeups: bool) -> float:
    (port,) = free_ports(1)
    process = subprocess.Popen([sys.executable, "-c", BARE_SCP, str(port), CALLED, "wakeups" if wakeups else "plain"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_port(port)
        return storescu(port, [study])
    finally:
        process.terminate()
        process.wait(timeout=10)


def healthz(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return json.load(response)


def start_gateway(workdir: Path, storage_url: str, processes: int, bucket: str = BUCKET,
                  wakeups: bool = True) -> tuple[subprocess.Popen, int, int]:
    dicom_port, health_port = free_ports(2)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "gateway.yaml"
    config.write_text(
        f"dicom:\n  ae_title: {CALLED}\n  address: 127.0.0.1\n  port: {dicom_port}\n"
        f"  calling_ae_titles: [{CALLING}]\n  max_associations: 32\n  reactor_wakeups: {str(wakeups).lower()}\n"
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


def create_bucket(storage_url: str, name: str) -> None:
    request = urllib.request.Request(f"{storage_url}/storage/v1/b?project=bench", method="POST",
                                     data=json.dumps({"name": name}).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()


def gateway_runs(study: Path, parts: list[Path], workdir: Path, expected: int, processes: int) -> dict[str, float]:
    gcs = start_fake_gcs(workdir / "gcs")
    process = None
    try:
        create_bucket(gcs.url, BUCKET)
        create_bucket(gcs.url, BUCKET + "-polling")
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
        results = {"a": acknowledged, "b": landed, "assoc_gateway": association_seconds(dicom_port, CALLED)}
        before = healthz(health_port)
        results["a_per_flush"] = before["appended"] / max(1, before["flushes"])
        if len(parts) > 1:
            results["d"] = storescu(dicom_port, parts)  # identical re-sends: spooled again, not uploaded again
            after = healthz(health_port)
            results["d_per_flush"] = ((after["appended"] - before["appended"])
                                      / max(1, after["flushes"] - before["flushes"]))
        process.terminate()
        process.wait(timeout=30)
        process, dicom_port, _ = start_gateway(workdir / "polling", gcs.url, processes, bucket=BUCKET + "-polling",
                                               wakeups=False)
        results["g"] = storescu(dicom_port, [study])
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
    parser.add_argument("--repeat", type=int, default=1, help="run every row this many times: median, lowest, highest")
    args = parser.parse_args(argv)
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install -y dcmtk")

    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    runs: list[dict[str, float]] = []
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
        for run in range(args.repeat):
            results = dict(zip(("c", "assoc_storescp"), dcmtk_ceiling(study, workdir / f"run-{run}")))
            results.update(zip(("copy_deep", "copy_shared"), context_copy_seconds()))
            results.update(gateway_runs(study, parts, workdir / f"run-{run}", len(files), args.upload_processes))
            results["e"] = pynetdicom_ceiling(study, wakeups=False)
            results["h"] = pynetdicom_ceiling(study, wakeups=True)
            runs.append(results)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    print_table(runs, args, len(files), total, load_before, load_after)
    return 0


def print_table(runs: list[dict[str, float]], args: argparse.Namespace, count: int, total: int,
                load_before: tuple[float, ...], load_after: tuple[float, ...]) -> None:
    """One line per row: the median of the runs (seconds, inst/s, MB/s) and, with several runs, the range of inst/s."""
    labels = [
        ("a", "(a) gateway, acknowledged (fsynced in the spool)"),
        ("b", "(b) gateway, last instance in the inbox bucket"),
        ("c", "(c) DCMTK storescp -od, local disk (no fsync)"),
        ("d", f"(d) gateway, {args.parallel} associations at once, acknowledged"),
        ("e", "(e) bare pynetdicom SCP, acknowledges without storing"),
        ("f", "(f) gateway, acknowledged, no upload running beside it"),
        ("g", "(g) = (a) without wake-ups (pynetdicom polls, 1 ms sleeps)"),
        ("h", "(h) = (e) with wake-ups (gateway/wakeups.py)"),
    ]
    seconds = {key: statistics.median(run[key] for run in runs) for key, _ in labels if key in runs[0]}
    repeat = f", median of {len(runs)} runs" if len(runs) > 1 else ""
    print(f"{count} instances ({args.rows}x{args.cols} 16-bit CT, {total / count / 1e3:.0f} kB each, {total / 1e6:.1f} MB), "
          f"storescu with TCP_NODELAY=1, uploads.processes {args.upload_processes}, {os.cpu_count()} CPUs{repeat}, "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    spread = f" {'inst/s low-high':>16}" if len(runs) > 1 else ""
    print(f"{'':<62} {'seconds':>8} {'inst/s':>8} {'MB/s':>8}{spread}")
    for key, label in labels:
        if key not in seconds:
            continue
        line = f"{label:<62} {seconds[key]:>8.2f} {count / seconds[key]:>8.1f} {total / 1e6 / seconds[key]:>8.1f}"
        if len(runs) > 1:
            rates = sorted(count / run[key] for run in runs)
            line += f" {f'{rates[0]:.0f}-{rates[-1]:.0f}':>16}"
        print(line)
    flushes = f"records per fdatasync: (a) {statistics.median(run['a_per_flush'] for run in runs):.2f}"
    if "d_per_flush" in runs[0]:
        flushes += (f", (d) {statistics.median(run['d_per_flush'] for run in runs):.2f} "
                    "(group commit shared between associations)")
    print(flushes)
    ratio = {key: statistics.median(run["c"] / run[key] for run in runs) for key in ("a", "e", "g", "h")}
    gain = {key: statistics.median(run[slow] / run[key] for run in runs) for key, slow in (("a", "g"), ("h", "e"))}
    print(f"(a)/(c) = {ratio['a']:.2f} (aim: at least 0.5), (g)/(c) = {ratio['g']:.2f} without wake-ups; "
          f"(h)/(c) = {ratio['h']:.2f}, (e)/(c) = {ratio['e']:.2f} (the most a pynetdicom receiver reaches here, "
          f"with and without); wake-ups: (a)/(g) = {gain['a']:.2f}x, (h)/(e) = {gain['h']:.2f}x; "
          f"(a)/(h) = {statistics.median(run['h'] / run['a'] for run in runs):.2f}, "
          f"(f)/(h) = {statistics.median(run['h'] / run['f'] for run in runs):.2f}")
    milliseconds = {key: statistics.median(run[key] for run in runs) * 1e3
                    for key in ("assoc_gateway", "assoc_storescp", "copy_deep", "copy_shared")}
    print(f"one association (echoscu: associate, C-ECHO, release, median of 20): gateway "
          f"{milliseconds['assoc_gateway']:.1f} ms, storescp {milliseconds['assoc_storescp']:.1f} ms; its copy of the "
          f"supported contexts: {milliseconds['copy_shared']:.2f} ms (pynetdicom's deepcopy: "
          f"{milliseconds['copy_deep']:.1f} ms)")


if __name__ == "__main__":
    sys.exit(main())
