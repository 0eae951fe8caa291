"""What every chaos scenario measures and checks, and the one line it prints.

A scenario uploads a fresh set of objects under a unique prefix, does its damage,
waits until every matched object is covered by a reported batch, then
:meth:`Run.finish` checks the invariants of issue 5 and returns the figures:

* every valid object is in the store (QIDO through the emulator);
* the failures reported add up to the invalid ``.dcm`` files matched;
* each matched object is reported by exactly one batch, each batch once;
* no unhandled exception in the function logs (``unexpected error`` ERROR
  lines, or any ``Traceback``), counted from the scenario's start;
* nothing left unfinished in the state bucket (issue 10): every batch record
  created since the scenario's start is ``done``, the rule's lease names a
  sealed batch or one whose record is ``done``, and the reconcile sweep, if
  any, is ``done`` (waited for up to ``SETTLE_SECONDS``).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pytest
import requests

from handlers.batch.layout import DONE, SEALED, lease_path, member_prefix, record_path, seal_path
from handlers.reconcile.progress import SWEEP_PATH
from localstack import samples
from localstack.observe import ResultsReader, store_sop_uids
from localstack.stack import Stack
from tests.e2e.helpers import covered_names, direct, storage, unique_prefix, upload, wait_for_names
from tests.message_schemas import validate

LOGGED_FUNCTIONS = ("function", "followup", "export")
RULE = "chaos"  # the only rule of tests/chaos/config.yaml
RECORDS = f"batches/{RULE}/"  # where its batch records are (handlers.batch.layout.record_path)
SETTLE_SECONDS = 30.0  # once every result is in, how long batches, lease and sweep may take to finish


# -- scale ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """How hard each scenario pushes. ``short`` runs in ``make test``, ``long`` in ``make chaos``."""

    name: str
    objects: int  # objects per scenario (valid and invalid .dcm)
    invalid_every: int  # one invalid .dcm in this many objects
    waves: int  # uploads in this many waves, each once the previous one has a sealed batch
    kill_rounds: int  # scenario 3: kills of the function processes
    outages: int  # scenario 4: Pub/Sub outages
    outage_seconds: float  # scenario 4: length of each outage
    gcs_outages: int  # scenario 7: Cloud Storage outages
    gcs_outage_seconds: float  # scenario 7: length of each
    timeout: float  # seconds to wait for every result of a scenario
    quiet: float  # seconds to keep listening once everything is reported (late duplicates)


SCALES = {
    "short": Scale("short", objects=40, invalid_every=8, waves=2, kill_rounds=1, outages=1, outage_seconds=10.0,
                   gcs_outages=1, gcs_outage_seconds=10.0, timeout=150.0, quiet=5.0),
    "long": Scale("long", objects=400, invalid_every=10, waves=4, kill_rounds=6, outages=3, outage_seconds=30.0,
                  gcs_outages=2, gcs_outage_seconds=30.0, timeout=900.0, quiet=15.0),
}


def scale_from_env() -> Scale:
    """``CHAOS_SCALE`` (``short``, the default, or ``long``); ``CHAOS_OUTAGE_SECONDS`` overrides the outages."""
    wanted = os.environ.get("CHAOS_SCALE", "short").strip().lower() or "short"
    if wanted not in SCALES:
        raise pytest.UsageError(f"CHAOS_SCALE={wanted!r}: use one of {', '.join(SCALES)}")
    scale = SCALES[wanted]
    outage = os.environ.get("CHAOS_OUTAGE_SECONDS", "").strip()
    if outage:
        try:
            seconds = float(outage)
        except ValueError:
            raise pytest.UsageError(f"CHAOS_OUTAGE_SECONDS={outage!r} is not a number of seconds") from None
        # Listen as long again once everything is reported: a publication that outlived the outage may come late.
        scale = replace(scale, outage_seconds=seconds, timeout=scale.timeout + 2 * seconds * scale.outages,
                        quiet=max(scale.quiet, seconds))
    return scale


# -- objects --------------------------------------------------------------------------------------
@dataclass
class Drop:
    """The objects of one scenario: what should end up in the store and what should fail."""

    prefix: str
    files: list[tuple[str, bytes]] = field(default_factory=list)
    valid: dict[str, str] = field(default_factory=dict)  # name -> SOP Instance UID
    invalid: set[str] = field(default_factory=set)  # matched .dcm names the import must count as failures
    unmatched: set[str] = field(default_factory=set)  # uploaded, never imported

    @property
    def matched(self) -> set[str]:
        return set(self.valid) | self.invalid

    def add_valid(self, name: str, sop: str, data: bytes) -> None:
        self.files.append((name, data))
        self.valid[name] = sop

    def add_invalid(self, name: str, data: bytes) -> None:
        self.files.append((name, data))
        self.invalid.add(name)

    def add_unmatched(self, name: str, data: bytes) -> None:
        self.files.append((name, data))
        self.unmatched.add(name)


def invalid_dicom(kind: int, valid: bytes) -> bytes:
    """Bytes the import cannot read as DICOM: empty, text, a cut-off file, random bytes."""
    choice = kind % 4
    if choice == 0:
        return b""
    if choice == 1:
        return b"this is not DICOM, whatever the name says\n"
    if choice == 2:
        return valid[:200]  # preamble and a piece of the file meta, then nothing
    return random.Random(kind).randbytes(512)


def make_drop(label: str, count: int, invalid_every: int, rng: random.Random) -> Drop:
    """``count`` objects in a few folders, one in ``invalid_every`` not DICOM; names shuffled."""
    drop = Drop(unique_prefix(f"chaos-{label}"))
    series = samples.make_series(count)
    for index, (uids, data) in enumerate(series):
        folder = f"{drop.prefix}study{index % 3}/series{index % 2}/"
        if index % invalid_every == invalid_every - 1:
            drop.add_invalid(f"{folder}bad{index:04d}.dcm", invalid_dicom(index, data))
        else:
            drop.add_valid(f"{folder}IMG{index:04d}.dcm", uids.sop, data)
    rng.shuffle(drop.files)
    return drop


# -- observing ------------------------------------------------------------------------------------
class LogWatch:
    """Reads what the function processes logged since it was created (kills and restarts append)."""

    def __init__(self, stack: Stack) -> None:
        self.paths = {name: stack.functions[name].log_path for name in LOGGED_FUNCTIONS}
        self.offsets = {name: _size(path) for name, path in self.paths.items()}

    def lines(self, name: str) -> list[str]:
        path = self.paths[name]
        with open(path, "rb") as handle:
            handle.seek(self.offsets[name])
            return handle.read().decode("utf-8", "replace").splitlines()

    def entries(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines (one-line JSON for Cloud Logging)."""
        out = []
        for line in self.lines(name):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def unhandled(self) -> list[str]:
        """``unexpected error`` ERROR lines, and tracebacks (with their last line), by process name."""
        found = []
        for name in self.paths:
            lines = self.lines(name)
            for index, line in enumerate(lines):
                if "Traceback" in line:
                    last = next((later for later in lines[index + 1:] if later and not later[0].isspace()), "")
                    found.append(f"{name}: {line.strip()} ... {last[:300]}")
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("severity") == "ERROR" \
                        and "unexpected error" in str(entry.get("message")):
                    found.append(f"{name}: {line[:600]}")
        return found


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@dataclass(frozen=True)
class Counters:
    """Cumulative counters of the stack at one moment."""

    bridge_failed: int  # deliveries the bridge had to retry (non-2xx, refused, timed out)
    import_requests: int  # dicomStores.import requests the emulator received
    import_refused: int  # ... of which it answered with an injected 429/503
    injected: int  # injected 429/503 answers, every method
    gcs_injected: int = 0  # Cloud Storage calls the proxy answered with an injected 429/503
    gcs_outage_refused: int = 0  # ... answered 503 during an outage
    gcs_rate_limited: int = 0  # ... refused by the one-write-per-second limit
    dropped_events: int = 0  # notifications the bridge lost on purpose

    @classmethod
    def read(cls, stack: Stack) -> "Counters":
        full = requests.get(f"{stack.env['HEALTHCARE_EMULATOR_HOST'].rstrip('/')}/emulator/stats",
                            params={"view": "full"}, timeout=10).json()
        injected = full.get("injectedErrors", {})
        gcs = requests.get(f"{stack.env['STORAGE_EMULATOR_HOST']}/proxy/stats", timeout=10).json()
        bridge = stack.bridge_status()
        return cls(bridge_failed=int(bridge["failed_attempts"]),
                   import_requests=int(full["requests"].get("dicomStores.import", 0)),
                   import_refused=sum(injected.get("dicomStores.import", {}).values()),
                   injected=sum(sum(by_status.values()) for by_status in injected.values()),
                   gcs_injected=sum(sum(by_status.values()) for by_status in gcs["injectedErrors"].values()),
                   gcs_outage_refused=int(gcs["outageRefused"]), gcs_rate_limited=sum(gcs["rateLimited"].values()),
                   dropped_events=sum(int(route.get("dropped", 0)) for route in bridge["routes"].values()))

    def __sub__(self, other: "Counters") -> "Counters":
        return Counters(*(mine - theirs for mine, theirs in zip(astuple(self), astuple(other))))


class StateWatch:
    """The batch records of the state bucket, to time damage against the batching protocol."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.bucket = storage(direct(env)).bucket(env["STATE_BUCKET"])  # sees through Cloud Storage faults
        self.known = {blob.name for blob in self.bucket.list_blobs(prefix=RECORDS)}

    def document(self, path: str) -> dict[str, Any] | None:
        """The JSON document at ``path`` (its latest generation); None when there is none or it cannot be read."""
        try:
            return json.loads(self.bucket.blob(path).download_as_bytes())
        except Exception:  # noqa: BLE001 - absent, or replaced between list and read: the next look sees it
            return None

    def new_records(self) -> dict[str, str]:
        """Batch records created since this watch began: path -> state (``unreadable`` when a read failed)."""
        states = {}
        for blob in self.bucket.list_blobs(prefix=RECORDS):
            if blob.name not in self.known:
                states[blob.name] = (self.document(blob.name) or {}).get("state", "unreadable")
        return states

    def open_batch_with_members(self) -> str | None:
        """The rule's open batch once at least one object joined it (a batch in the middle of its window)."""
        lease = self.document(lease_path(RULE))
        if lease is None or lease.get("state") == SEALED or self.bucket.blob(seal_path(RULE, lease["batch"])).exists():
            return None
        joined = self.bucket.list_blobs(prefix=member_prefix(RULE, lease["batch"]), max_results=1)
        return lease["batch"] if any(True for _ in joined) else None

    def unfinished(self) -> tuple[int, list[str]]:
        """How many new batch records there are, and what is left unfinished, each by name and state.

        Unfinished: a new batch record not ``done``; a lease whose batch has no
        seal and no ``done`` record (a batch still open); a reconcile sweep not ``done``.
        """
        records = self.new_records()
        left = [f"batch record {path} is {state}" for path, state in sorted(records.items()) if state != DONE]
        lease = self.document(lease_path(RULE))
        if lease is not None and lease.get("state") != SEALED \
                and not self.bucket.blob(seal_path(RULE, lease["batch"])).exists():
            record = self.document(record_path(RULE, lease["batch"])) or {}
            if record.get("state") != DONE:
                left.append(f"lease {lease_path(RULE)} names batch {lease['batch']}: no seal, its record is "
                            f"{record.get('state', 'absent')}")
        sweep = self.document(SWEEP_PATH)
        if sweep is not None and sweep.get("state") != DONE:
            left.append(f"{SWEEP_PATH} (sweep {sweep.get('sweep')}) is {sweep.get('state')}")
        return len(records), left

    def describe(self) -> str:
        """The lease, how many objects joined its batch, and the new records, for a failure message."""
        try:
            lease = json.loads(self.bucket.blob(lease_path(RULE)).download_as_bytes())
        except Exception as exc:  # noqa: BLE001 - shown as is
            lease = repr(exc)
        joined = 0
        if isinstance(lease, dict):
            joined = sum(1 for _ in self.bucket.list_blobs(prefix=member_prefix(RULE, lease.get("batch"))))
        return f"lease {lease}, {joined} objects joined its batch, new records {self.new_records()}"

    def wait_for(self, condition: Callable[["StateWatch"], Any], timeout: float, every: float = 0.05) -> Any:
        """Poll ``condition(self)`` until it is truthy (returned) or ``timeout`` passes (None)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition(self)
            if value:
                return value
            time.sleep(every)
        return None


def sealed_record(watch: StateWatch, seen: Iterable[str] = ()) -> str | None:
    """A new batch record that is sealed and listed (its import is next, then its result)."""
    skip = set(seen)
    for path, state in watch.new_records().items():
        if path not in skip and state in ("listed", "importing"):
            return path
    return None


def upload_in_waves(env: Mapping[str, str], files: list[tuple[str, bytes]], waves: int, watch: StateWatch,
                    each: Callable[[list[tuple[str, bytes]]], dict[str, str]] | None = None) -> dict[str, str]:
    """Upload ``files`` in ``waves`` parts, each once a batch of the previous one is sealed.

    One burst would land in a single batch (the window listing runs every second);
    waves make several batches, sealed by count and by time. ``each`` uploads one
    part (default :func:`tests.e2e.helpers.upload`). Returns name -> generation.
    """
    generations: dict[str, str] = {}
    parts = [part for part in (files[index::waves] for index in range(waves)) if part]
    for index, part in enumerate(parts):
        seen = set(watch.new_records())
        generations.update(each(part) if each else upload(env, part))
        if index < len(parts) - 1:
            watch.wait_for(lambda w: sealed_record(w, seen), timeout=60)
    return generations


# -- one scenario ---------------------------------------------------------------------------------
@dataclass
class Figures:
    scenario: str
    objects: int
    valid_in_store: int
    valid_expected: int
    failures_reported: int
    failures_expected: int
    results: int
    duplicates: int
    import_calls: int
    import_calls_refused: int
    bridge_retries: int
    injected: int
    seconds: float
    extra: str = ""

    def line(self, scale: str) -> str:
        extra = f" | {self.extra}" if self.extra else ""
        return (f"{self.scenario:<15} [{scale}] objects {self.objects:>4} | valid in store "
                f"{self.valid_in_store}/{self.valid_expected} | failures {self.failures_reported}/"
                f"{self.failures_expected} | results {self.results} | duplicates {self.duplicates} | "
                f"import calls {self.import_calls} ({self.import_calls_refused} refused) | retries: bridge "
                f"{self.bridge_retries}, injected {self.injected} | {self.seconds:.1f} s{extra}")


class Run:
    """One scenario on the shared stack: baseline at start, invariants and figures at the end."""

    def __init__(self, name: str, stack: Stack, scale: Scale, report: list[str]) -> None:
        self.name = name
        self.stack = stack
        self.env = stack.env
        self.scale = scale
        self.report = report
        self.reader = ResultsReader(self.env)
        self.reader.drain(quiet=0.5)
        self.logs = LogWatch(stack)
        self.state = StateWatch(self.env)
        self.before = Counters.read(stack)
        self.started = time.monotonic()
        self.extra: list[str] = []

    def note(self, text: str) -> None:
        """Add ``text`` to the scenario's printed line."""
        self.extra.append(text)

    def results_for(self, drop: Drop, timeout: float | None = None) -> list:
        """Wait until every matched object of ``drop`` is reported, then listen ``quiet`` seconds more."""
        return wait_for_names(self.reader, self.env["INBOX_BUCKET"], drop.prefix, drop.matched,
                              timeout=self.scale.timeout if timeout is None else timeout, quiet=self.scale.quiet,
                              env=self.env, must_cover=False)

    def finish(self, drop: Drop, checks: Callable[[], Iterable[str]] | None = None) -> Figures:
        """Wait for the results, record the scenario's line, then fail with every problem found.

        ``checks``: the scenario's own checks, run once every result is in; they
        return what they found wrong, reported with the invariants.
        """
        bucket = self.env["INBOX_BUCKET"]
        results = self.results_for(drop)
        seconds = time.monotonic() - self.started
        delta = Counters.read(self.stack) - self.before
        in_store = set(drop.valid.values()) & store_sop_uids(self.env)
        batches = Counter(result.data["batch"] for result in results)
        distinct = {result.data["batch"]: result for result in results}
        covered = covered_names(results, bucket, drop.prefix, self.env)
        failures = sum(result.data["counter"]["failure"] for result in distinct.values())
        successes = sum(result.data["counter"]["success"] for result in distinct.values())
        figures = Figures(
            scenario=self.name, objects=len(drop.files), valid_in_store=len(in_store),
            valid_expected=len(drop.valid), failures_reported=failures, failures_expected=len(drop.invalid),
            results=len(results), duplicates=sum(batches.values()) - len(batches),
            import_calls=delta.import_requests, import_calls_refused=delta.import_refused,
            bridge_retries=delta.bridge_failed, injected=delta.injected, seconds=seconds,
            extra=", ".join(self.extra))
        self.report.append(figures.line(self.scale.name))

        found = list(checks()) if checks else []
        missing = drop.matched - set(covered)
        if missing:
            found.append(f"{len(missing)} matched objects never reported, e.g. {sorted(missing)[:5]}")
        if set(covered) - drop.matched:
            found.append(f"reported but not matched: {sorted(set(covered) - drop.matched)[:5]}")
        twice = {name: count for name, count in covered.items() if count > 1}
        if twice:
            found.append(f"objects reported by more than one batch: {twice}")
        if len(in_store) != len(drop.valid):
            absent = sorted(name for name, sop in drop.valid.items() if sop not in in_store)
            found.append(f"{len(absent)} valid objects not in the store, e.g. {absent[:5]}")
        if failures != len(drop.invalid):
            found.append(f"failures reported {failures}, invalid .dcm files {len(drop.invalid)}")
        if successes != len(drop.valid):
            found.append(f"successes reported {successes}, valid objects {len(drop.valid)}")
        if figures.duplicates:
            found.append(f"result published more than once: {[(b, n) for b, n in batches.items() if n > 1]}")
        found += [f"unhandled exception logged by {line}" for line in self.logs.unhandled()[:20]]
        found += self.unfinished()
        for result in distinct.values():
            try:
                validate(result.data, result.attributes)
            except Exception as exc:  # noqa: BLE001 - reported with the rest
                found.append(f"result of batch {result.data.get('batch')} does not match the schema: {exc}")
            counted = result.data["counter"]["success"] + result.data["counter"]["failure"]
            if counted != result.data["objectCount"]:
                found.append(f"batch {result.data['batch']}: the operation counted {counted} files "
                             f"({result.data['counter']}), the manifest lists {result.data['objectCount']} "
                             f"(docs/chaos.md, finding 1)")
            if result.data["outcome"] not in ("SUCCEEDED", "PARTIAL", "FAILED"):
                found.append(f"batch {result.data['batch']} ended {result.data['outcome']}: {result.data.get('error')}")
        assert not found, f"{self.name}: " + "\n".join(found)
        return figures

    def unfinished(self) -> list[str]:
        """What the state bucket still has unfinished once every result is in (waits up to ``SETTLE_SECONDS``)."""
        self.state.wait_for(lambda watch: not watch.unfinished()[1], timeout=SETTLE_SECONDS, every=0.5)
        records, left = self.state.unfinished()
        found = [f"still unfinished {SETTLE_SECONDS:g} s after every result was in: {item}" for item in left]
        if not records:
            found.append(f"no batch record under {RECORDS} since the scenario began: its end state went unchecked")
        return found
