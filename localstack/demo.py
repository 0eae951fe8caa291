"""``make demo``: a realistic drop through the whole local stack, then a table of the results.

Starts its own stack in ``.local/demo`` (a ``make up`` stack keeps running),
uploads several studies in nested folders (a synthetic CT study and files that
ship with pydicom), a corrupt ``.dcm``, a file no rule matches and one the
config ignores, and sends a synthetic MR study by DICOM C-STORE (a pynetdicom
SCU) to the stack's gateway, as a modality would, and asks for its storage
commitment (N-ACTION; the report comes back once every instance is in the
inbox bucket); waits for the result messages
on Pub/Sub; prints them (how many objects of each batch came by C-STORE), and
the failed file by its name and the API's reason; checks the store through
QIDO; stops the stack. Exit status 1 if anything is
missing or wrong.

    .venv/bin/python -m localstack.demo [--keep]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from dataclasses import dataclass, field
from math import ceil
from pathlib import Path

from . import samples
from .console import START_FAILURES, start_failed
from .names import REPO_ROOT, Names
from .observe import Result, ResultsReader, api_calls, covered_objects, result_object_uris, store_sop_uids
from .stack import Stack

# Bundled pydicom files with unique UIDs among themselves, Part 10, parseable.
BUNDLED = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm", "examples_overlay.dcm")
WAIT_SECONDS = 120.0
PROG = "python -m localstack.demo"


@dataclass
class Drop:
    """What the demo uploads and what it expects of each object."""

    files: list[tuple[str, bytes]] = field(default_factory=list)
    cstore: list[tuple[samples.InstanceUids, bytes]] = field(default_factory=list)  # sent to the gateway
    valid_sops: set[str] = field(default_factory=set)
    corrupt: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add_valid(self, name: str, sop: str, data: bytes) -> None:
        self.files.append((name, data))
        self.valid_sops.add(sop)

    @property
    def matched(self) -> int:
        return len(self.valid_sops) + len(self.corrupt)


def build_drop() -> Drop:
    drop = Drop()
    ct = samples.make_study(2, 20, modality="CT", patient_id="DEMO-001", patient_name="Demo^Ct",
                            study_description="CT chest")
    for uids, data in ct:
        drop.add_valid(f"site-a/2026-11-25/CT/{uids.study}/{uids.series}/{uids.sop}.dcm", uids.sop, data)
    mr = samples.make_study(3, 8, modality="MR", patient_id="DEMO-002", patient_name="Demo^Mr",
                            study_description="MR brain")
    drop.cstore = mr
    drop.valid_sops.update(uids.sop for uids, _ in mr)
    import pydicom
    from io import BytesIO

    for name in BUNDLED:
        data = samples.bundled_bytes(name)
        sop = str(pydicom.dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        drop.add_valid(f"site-b/archive/{name}", sop, data)
    drop.files.append(("site-a/2026-11-25/CT/corrupt/IMG9999.dcm", b"this is not a DICOM file" * 10))
    drop.corrupt.append("site-a/2026-11-25/CT/corrupt/IMG9999.dcm")
    drop.files.append(("site-a/2026-11-25/report.txt", b"radiology report, not DICOM"))
    drop.files.append(("tmp/upload-in-progress.dcm", ct[0][1]))
    drop.skipped += ["site-a/2026-11-25/report.txt (no rule matches)", "tmp/upload-in-progress.dcm (ignored: tmp/**)"]
    return drop


def upload(env: dict[str, str], drop: Drop) -> float:
    from concurrent.futures import ThreadPoolExecutor

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=env["GOOGLE_CLOUD_PROJECT"], credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": env["STORAGE_EMULATOR_HOST"]})
    bucket = client.bucket(env["INBOX_BUCKET"])
    started = time.time()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda item: bucket.blob(item[0]).upload_from_string(item[1]), drop.files))
    return started


def send_by_cstore(env: dict[str, str], drop: Drop) -> list[int]:
    """C-STORE the drop's ``cstore`` study to the stack's gateway (one association); the status of each."""
    import pydicom
    from io import BytesIO
    from pynetdicom import AE, build_context

    datasets = [pydicom.dcmread(BytesIO(data)) for _, data in drop.cstore]
    contexts = [build_context(sop_class, [str(datasets[0].file_meta.TransferSyntaxUID)])
                for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets})]
    ae = AE(ae_title=env["GATEWAY_CALLING_AE_TITLE"])
    assoc = ae.associate(env["GATEWAY_HOST"], int(env["GATEWAY_PORT"]), ae_title=env["GATEWAY_AE_TITLE"],
                         contexts=contexts)
    if not assoc.is_established:
        return [-1] * len(datasets)
    try:
        return [int(assoc.send_c_store(ds).get("Status", -1)) for ds in datasets]
    finally:
        assoc.release()


def ask_for_commitment(env: dict[str, str], drop: Drop, timeout: float = 90.0) -> tuple[int, int, int]:
    """Storage commitment of the C-STORE'd study, as a modality asks it: (event type, committed, failed).

    Listens on ``GATEWAY_COMMITMENT_PORT`` for the gateway's N-EVENT-REPORT and sends the
    N-ACTION on a new association; (0, 0, 0) when no report came within ``timeout``.
    """
    import queue

    import pydicom
    from io import BytesIO
    from pydicom.uid import generate_uid

    from .modality import commitment_reports, request_commitment

    datasets = [pydicom.dcmread(BytesIO(data), stop_before_pixels=True) for _, data in drop.cstore]
    references = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]
    calling = env["GATEWAY_CALLING_AE_TITLE"]
    with commitment_reports(calling, int(env["GATEWAY_COMMITMENT_PORT"])) as (_, reports):
        status = request_commitment(env["GATEWAY_HOST"], int(env["GATEWAY_PORT"]), env["GATEWAY_AE_TITLE"], calling,
                                    references, generate_uid())
        if status != 0:
            return 0, 0, 0
        try:
            event_type, _, report = reports.get(timeout=timeout)
        except queue.Empty:
            return 0, 0, 0
    return event_type, len(report.get("ReferencedSOPSequence", [])), len(report.get("FailedSOPSequence", []))


def wait_for_results(reader: ResultsReader, drop: Drop) -> list[Result]:
    """The result messages, once they cover every object of ``drop`` the rules match (or after WAIT_SECONDS)."""
    return reader.until(lambda got: covered_objects(got) >= drop.matched, WAIT_SECONDS, quiet=2.0)


def in_store(env: dict[str, str], drop: Drop) -> int:
    """How many of the drop's valid instances are in the DICOM store (QIDO)."""
    return len(drop.valid_sops & store_sop_uids(env))


def table(env: dict[str, str], results: list[Result], uploaded_at: float) -> str:
    header = (f"{'batch':<28} {'outcome':<9} {'objects':>7} {'C-STORE':>7} {'success':>7} {'failure':>7} "
              f"{'wait s':>6} {'latency s':>9}")
    lines = [header, "-" * len(header)]
    gateway_prefix = f"gs://{env['INBOX_BUCKET']}/{Names().gateway_prefix}"
    for result in sorted(results, key=lambda r: r.data["batch"]):
        data = result.data
        by_cstore = sum(uri.startswith(gateway_prefix) for uri in result_object_uris(env, result))
        lines.append(f"{data['batch']:<28} {data['outcome']:<9} {data['objectCount']:>7} {by_cstore:>7} "
                     f"{data['counter']['success']:>7} {data['counter']['failure']:>7} "
                     f"{data['timings']['waitSeconds'] or 0:>6.1f} {result.received_at - uploaded_at:>9.1f}")
    return "\n".join(lines)


def failed_files(results: list[Result]) -> str:
    """Each failed file named in the results: its URI, kind and the API's reason."""
    lines = ["failed files (named in the results, with the API's reason):"]
    for result in sorted(results, key=lambda r: r.data["batch"]):
        for item in result.data.get("failures") or []:
            reason = str(item["error"]["message"])
            lines.append(f"  {item['uri']}  {item['kind']}  {reason[:120]}{'...' if len(reason) > 120 else ''}"
                         f"  (found by {item['source']})")
    return "\n".join(lines) if len(lines) > 1 else "failed files: none"


def verify(env: dict[str, str], drop: Drop, results: list[Result], max_objects: int) -> list[str]:
    """Everything that is wrong, one line each (empty when the demo succeeded)."""
    problems = []
    imports = [r for r in results if r.data["schema"] == "dicom-import-result/v1"]
    if covered_objects(imports) != drop.matched:
        problems.append(f"results cover {covered_objects(imports)} objects, expected {drop.matched}")
    failures = sum(r.data["counter"]["failure"] for r in imports)
    if failures != len(drop.corrupt):
        problems.append(f"results count {failures} failures, expected {len(drop.corrupt)} (the corrupt file)")
    named = {item["uri"]: item["kind"] for r in imports for item in r.data.get("failures") or []}
    for name in drop.corrupt:
        uri = f"gs://{env['INBOX_BUCKET']}/{name}"
        if named.get(uri) != "not-dicom":
            problems.append(f"{uri} is not named as a failed file of kind not-dicom in the results")
    missing = drop.valid_sops - store_sop_uids(env)
    if missing:
        problems.append(f"{len(missing)} valid instances are not in the store")
    calls = api_calls(env).get("dicomStores.import", 0)
    bound = ceil(drop.matched / max_objects) + 1
    if calls > bound:
        problems.append(f"{calls} import calls for {drop.matched} objects, bound is {bound}")
    if len({r.data["batch"] for r in imports}) != len(imports):
        problems.append("a batch was reported twice")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Run a realistic drop through the local stack.")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".local" / "demo")
    parser.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    args = parser.parse_args(argv)
    try:
        return _demo(args)
    except KeyboardInterrupt:  # the stack stopped first (localstack.interrupts), unless --keep
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a service gone mid-run, or a bug: one line, the traceback in a file
        kept = args.workdir / "demo-error.log"
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(traceback.format_exc())
        print(f"{PROG} failed: {type(exc).__name__}: {exc} (the stack is stopped; the traceback is in {kept}, "
              f"the services' logs in {args.workdir / 'logs'})", file=sys.stderr)
        return 1


def _demo(args: argparse.Namespace) -> int:
    """Start the stack, send the drop, print and check what came of it, stop the stack; the exit code."""
    from handlers.config import load

    drop = build_drop()
    print(f"starting the local stack in {args.workdir} ...", flush=True)
    stack = Stack(args.workdir)
    try:
        env = stack.start()
    except START_FAILURES as exc:  # a program missing (java...), a config the functions cannot load, Ctrl-C
        return start_failed(PROG, exc)
    try:
        max_objects = load(env["DICOM_IMPORT_CONFIG"], env).batching.max_objects
        reader = ResultsReader(env)
        dropped_valid = len(drop.valid_sops) - len(drop.cstore)
        print(f"uploading {len(drop.files)} objects to gs://{env['INBOX_BUCKET']}/: {dropped_valid} valid "
              f"instances (a synthetic CT study and {len(BUNDLED)} files from pydicom), "
              f"{len(drop.corrupt)} corrupt .dcm, {len(drop.skipped)} that must not be imported", flush=True)
        uploaded_at = upload(env, drop)
        print(f"sending an MR study ({len(drop.cstore)} instances) by DICOM C-STORE to the gateway, AE "
              f"{env['GATEWAY_AE_TITLE']} at {env['GATEWAY_HOST']}:{env['GATEWAY_PORT']} ...", flush=True)
        statuses = send_by_cstore(env, drop)
        acknowledged = statuses.count(0)
        print(f"  {acknowledged}/{len(statuses)} C-STOREs acknowledged (each fsynced in the gateway's spool, "
              f"then uploaded to gs://{env['INBOX_BUCKET']}/{Names().gateway_prefix})", flush=True)
        event_type, committed, failed = ask_for_commitment(env, drop)
        print(f"  storage commitment: {committed}/{len(drop.cstore)} committed (N-EVENT-REPORT event type "
              f"{event_type or 'none'}: each instance is in the inbox bucket)", flush=True)
        print(f"waiting for results on {env['RESULTS_SUBSCRIPTION']} ...", flush=True)
        results = wait_for_results(reader, drop)
        print()
        print(table(env, results, uploaded_at))
        print()
        print(failed_files(results))
        print()
        calls = api_calls(env).get("dicomStores.import", 0)
        print(f"{drop.matched} objects matched the rules, imported with {calls} import call(s); "
              f"not imported: {'; '.join(drop.skipped)}")
        problems = verify(env, drop, results, max_objects)
        if acknowledged != len(drop.cstore):
            problems.append(f"the gateway acknowledged {acknowledged} of {len(drop.cstore)} C-STOREs: {statuses}")
        if (event_type, committed, failed) != (1, len(drop.cstore), 0):
            problems.append(f"storage commitment: event type {event_type}, {committed} committed, {failed} failed, "
                            f"expected all {len(drop.cstore)} committed")
        print(f"store check (QIDO): {in_store(env, drop)}/{len(drop.valid_sops)} valid instances present")
        for problem in problems:
            print(f"PROBLEM: {problem}")
        print("demo OK" if not problems else "demo FAILED")
        return 0 if not problems else 1
    finally:
        if args.keep:
            print(f"stack left running; environment in {stack.env_path}")
        else:
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
