"""End to end on the local stack: N small instances in F study folders, uploaded as fast as possible.

Runs the same drop twice, each on a fresh stack: our function (batched, the
repository's config.yaml) and the one-import-per-file baseline
(bench/naive_function.py). fake-gcs-server runs its filesystem backend for
both: its memory backend scans a list per call and slows down linearly past a
few thousand objects, which would measure the emulator, not the function. Prints, for each: import calls, result messages,
time from the first upload to the last result, latency from each object's
upload to its result (p50, p99), objects lost (valid instances missing from
the store, or objects no result covers), and peak memory of the function
processes.

    .venv/bin/python bench/bench_e2e.py [--objects 10000] [--folders 100] [--only batched|per-object]
    .venv/bin/python bench/bench_e2e.py --lone 10 [--only batched|per-object]

``--lone N`` measures instead the latency of a lone object: N objects, each
uploaded once the previous one is reported (and the batch window long gone),
from its upload to its result; the aim is ``seal_after_quiet_seconds + 5 s``.
The uploads go to fake-gcs-server directly (the load generator stands for the
modalities), the functions reach it through the stack's Cloud Storage proxy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from localstack import samples  # noqa: E402
from localstack.bridge import STORAGE_CLOUDEVENT  # noqa: E402
from localstack.observe import (ResultsReader, api_calls, call_bound, claim_times_by_rule,  # noqa: E402
                                result_object_uris, store_sop_uids)
from localstack.stack import FunctionSpec, Stack  # noqa: E402
from handlers.config import load  # noqa: E402

CONCURRENCY = 64  # deliveries in flight and threads per function process, the same for both


@dataclass
class Run:
    mode: str
    sealed_by: str
    upload_seconds: float
    import_calls: int
    operation_polls: int
    results: int
    seconds_to_last_result: float
    p50: float
    p99: float
    lost: int
    peak_rss_mb: float
    cpu_seconds: dict[str, float]
    claim_times: dict[str, list[float]]
    """When each object joined a batch, by rule (batched mode; empty for the baseline)."""


def build_drop(objects: int, folders: int) -> list[tuple[str, str, bytes]]:
    """(name, SOP UID, bytes): ``folders`` studies of one series each, objects spread evenly."""
    drop = []
    per_folder = -(-objects // folders)
    for folder in range(folders):
        count = min(per_folder, objects - len(drop))
        for number, (uids, data) in enumerate(samples.make_series(count, patient_id=f"BENCH-{folder:03d}")):
            drop.append((f"bench/study-{folder:03d}/IMG{number:05d}.dcm", uids.sop, data))
    return drop


def peak_rss_mb(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def process_tree_cpu_seconds(workdir: Path) -> dict[str, float]:
    """CPU seconds (user + system) each service of the stack has used so far, its child processes included.

    Read from ``/proc`` for the process each ``run/NAME.pid`` records and every live
    descendant: where the two CPU cores went, stand-ins (fake-gcs-server, the proxy,
    the emulators) included.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for pid_file in sorted((workdir / "run").glob("*.pid")):
        try:
            todo = [int(json.loads(pid_file.read_text())["pid"])]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        total = 0
        while todo:
            pid = todo.pop()
            todo.extend(children.get(pid, ()))
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        used[pid_file.stem] = round(total / ticks, 1)
    return used


def repository_batching():
    """The batching settings of config.yaml, the ones the batched stack runs with."""
    from localstack.names import Names

    names = Names()
    env = {**names.resource_env(), "DICOM_STORE": names.store_path}
    return load(ROOT / "config.yaml", env).batching


def make_stack(mode: str, workdir: Path) -> Stack:
    if mode == "batched":
        stack = Stack(workdir, max_in_flight=CONCURRENCY, threads=CONCURRENCY, gcs_backend="filesystem")
    else:
        spec = FunctionSpec("function", "on_object_finalized", "FUNCTION_URL", "notifications_bridge_subscription",
                            STORAGE_CLOUDEVENT)
        stack = Stack(workdir, source=ROOT / "bench" / "naive_function.py", functions=(spec,),
                      max_in_flight=CONCURRENCY, threads=CONCURRENCY, gcs_backend="filesystem")
    return stack


def inbox(env: dict[str, str]):
    """The inbox bucket, reached directly (fake-gcs-server, not the proxy): the modalities' side."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=env["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": env["FAKE_GCS_URL"]})
    return client, client.bucket(env["INBOX_BUCKET"])


def sealed_by(env: dict[str, str]) -> str:
    """How the batches were sealed (``sealedBecause`` of their records): ``full 2, quiet 1, window 0``."""
    client, _ = inbox(env)
    counts = {"full": 0, "quiet": 0, "window": 0}
    for blob in client.list_blobs(env["STATE_BUCKET"], prefix="batches/"):
        reason = json.loads(blob.download_as_bytes()).get("sealedBecause")
        if reason in counts:
            counts[reason] += 1
    return ", ".join(f"{reason} {count}" for reason, count in counts.items())


def run(mode: str, drop: list[tuple[str, str, bytes]], workdir: Path, timeout: float) -> Run:
    stack = make_stack(mode, workdir)
    try:
        env = stack.start()
        reader = ResultsReader(env)
        _, bucket = inbox(env)
        uploaded_at: dict[str, float] = {}

        def put(item: tuple[str, str, bytes]) -> None:
            bucket.blob(item[0]).upload_from_string(item[2])
            uploaded_at[f"gs://{env['INBOX_BUCKET']}/{item[0]}"] = time.time()

        started = time.time()
        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(put, drop))
        upload_seconds = time.time() - started
        print(f"  {mode}: uploaded {len(drop)} objects in {upload_seconds:.1f} s", flush=True)

        covered: dict[str, float] = {}

        def all_covered(results) -> bool:
            for result in results[len(covered_seen):]:
                covered_seen.append(result)
                for uri in result_object_uris(env, result):
                    covered.setdefault(uri, result.received_at)
            return len(covered) >= len(drop)

        covered_seen: list = []
        reader.until(all_covered, timeout)
        latencies = sorted(covered[uri] - uploaded_at[uri] for uri in covered if uri in uploaded_at)
        in_store = store_sop_uids(env)
        lost = len({sop for _, sop, _ in drop} - in_store) + (len(drop) - len(covered))
        calls = api_calls(env)
        pids = [service.pid for service in stack.functions.values() if service.pid]
        return Run(
            mode=mode,
            sealed_by=sealed_by(env) if mode == "batched" else "-",
            upload_seconds=upload_seconds,
            import_calls=calls.get("dicomStores.import", 0),
            operation_polls=calls.get("operations.get", 0),
            results=len(reader.received),
            seconds_to_last_result=max(covered.values(), default=started) - started,
            p50=statistics.median(latencies) if latencies else float("nan"),
            p99=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan"),
            lost=lost,
            peak_rss_mb=peak_rss_mb(pids),
            cpu_seconds=process_tree_cpu_seconds(stack.workdir),
            claim_times=claim_times_by_rule(env) if mode == "batched" else {},
        )
    finally:
        stack.stop()


def lone(mode: str, count: int, workdir: Path) -> list[float]:
    """Seconds from upload to result for ``count`` objects uploaded one at a time."""
    stack = make_stack(mode, workdir)
    try:
        env = stack.start()
        reader = ResultsReader(env)
        _, bucket = inbox(env)
        latencies = []
        for number, (uids, data) in enumerate(samples.make_series(count, patient_id="LONE")):
            name = f"lone/{number:03d}.dcm"
            uploaded = time.time()
            bucket.blob(name).upload_from_string(data)
            target = f"gs://{env['INBOX_BUCKET']}/{name}"
            reader.until(lambda got: any(target in result_object_uris(env, r) for r in got), timeout=120)
            reported = next(r.received_at for r in reader.received if target in result_object_uris(env, r))
            latencies.append(reported - uploaded)
            print(f"  {mode}: lone object {number + 1}: {latencies[-1]:.2f} s", flush=True)
            time.sleep(3.0)  # well past the quiet time: the next one is alone again
        return latencies
    finally:
        stack.stop()


def main_lone(args: argparse.Namespace) -> None:
    """The first object of a fresh stack meets cold functions (client imports, connections): shown apart."""
    quiet = repository_batching().seal_after_quiet_seconds
    rows = []
    for mode in ("batched", "per-object"):
        if args.only and args.only != mode:
            continue
        with tempfile.TemporaryDirectory(prefix=f"bench-lone-{mode}-") as workdir:
            first, *warm = lone(mode, args.lone + 1, Path(workdir))
        rows.append((mode, first, sorted(warm)))
    print()
    print(f"{'mode':<11} | {'cold 1st s':>10} | {'warm objects':>12} | {'p50 s':>6} | {'max s':>6} | "
          f"aim: quiet ({quiet:g} s) + 5 s = {quiet + 5:g} s")
    print("-" * 90)
    for mode, first, warm in rows:
        verdict = ("met" if warm[-1] <= quiet + 5 else "NOT met") + " (warm)" if mode == "batched" else ""
        print(f"{mode:<11} | {first:>10.2f} | {len(warm):>12} | {statistics.median(warm):>6.2f} | {warm[-1]:>6.2f} | "
              f"{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--folders", type=int, default=100)
    parser.add_argument("--only", choices=("batched", "per-object"))
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--lone", type=int, metavar="N",
                        help="measure N lone objects' latency instead (after one more that warms the functions)")
    args = parser.parse_args()
    if args.lone:
        main_lone(args)
        return

    started = time.time()
    drop = build_drop(args.objects, args.folders)
    print(f"generated {len(drop)} instances in {args.folders} folders in {time.time() - started:.1f} s "
          f"({sum(len(d) for _, _, d in drop) / len(drop) / 1024:.1f} KiB each)", flush=True)
    runs = []
    for mode in ("batched", "per-object"):
        if args.only and args.only != mode:
            continue
        with tempfile.TemporaryDirectory(prefix=f"bench-{mode}-") as workdir:
            runs.append(run(mode, drop, Path(workdir), args.timeout))

    print()
    print(f"{'mode':<11} | {'objects':>7} | {'import calls':>12} | {'op polls':>8} | {'results':>7} | "
          f"{'last result s':>13} | {'p50 s':>6} | {'p99 s':>6} | {'lost':>4} | {'fn RSS MB':>9} | sealed by")
    print("-" * 140)
    for r in runs:
        print(f"{r.mode:<11} | {len(drop):>7} | {r.import_calls:>12} | {r.operation_polls:>8} | {r.results:>7} | "
              f"{r.seconds_to_last_result:>13.1f} | {r.p50:>6.1f} | {r.p99:>6.1f} | {r.lost:>4} | {r.peak_rss_mb:>9.0f} | "
              f"{r.sealed_by}")
    batching = repository_batching()
    for r in runs:
        if r.mode == "batched":
            joins = [moment for times in r.claim_times.values() for moment in times]
            bound = sum(call_bound(len(times), batching.max_objects, batching.max_wait_seconds,
                                   batching.seal_after_quiet_seconds, times) for times in r.claim_times.values())
            span = max(joins) - min(joins) if joins else 0.0
            print(f"\ncall bound (docs/design.md, from the claims' times): ceil({len(drop)}/{batching.max_objects}) + 1, "
                  f"plus one per {batching.seal_after_quiet_seconds:g} s gap and per {batching.max_wait_seconds:g} s "
                  f"the joins lasted ({span:.0f} s; uploads {r.upload_seconds:.0f} s): {bound}; "
                  f"import calls {r.import_calls}: {'within' if r.import_calls <= bound else 'ABOVE'}")
    print("\nCPU seconds by process tree, stack start included (where the cores went):")
    for r in runs:
        print(f"  {r.mode:<11} total {sum(r.cpu_seconds.values()):6.1f}: "
              + ", ".join(f"{name} {seconds:g}" for name, seconds in sorted(r.cpu_seconds.items(), key=lambda i: -i[1])))
    print(f"\nconcurrency {CONCURRENCY} deliveries in flight and {CONCURRENCY} threads per function process for both; "
          f"{Path('/proc/cpuinfo').read_text().count('processor')} CPU cores shared by every process of the stack")


if __name__ == "__main__":
    main()
