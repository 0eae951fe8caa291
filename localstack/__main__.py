"""``python -m localstack up|down|status|env``: the local stack from the command line (``make up``...).

* ``up``: stop whatever a previous ``up`` left, start every service in the
  background on free ports, write ``.local/stack.env`` and the gcloud
  configuration ``.local/gcloud`` (``CLOUDSDK_CONFIG``), print a summary;
* ``down``: stop every process ``up`` started, by PID, and check none is left;
* ``status``: each service's PID, port and health, and the bridge's counters
  (exit 0 if all are healthy, 1 if some are not, 3 if the stack is not up or its files are damaged);
* ``env``: ``export KEY=VALUE`` lines for a shell, ``CLOUDSDK_CONFIG`` included, so that
  after ``eval "$(python -m localstack env)"`` the Google clients and ``gcloud`` use the stack.
* ``faults gcs show|set|outage|clear|write-interval``: Cloud Storage faults, through the proxy's admin API;
* ``events drop|deliver|show``: the bridge loses Cloud Storage notifications for good, or delivers them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import urllib.error
import urllib.request
from pathlib import Path

from . import gcloud
from .interrupts import uninterrupted
from .names import REPO_ROOT
from .process import ProcessRecord, is_ours, read_record, session_of

DEFAULT_WORKDIR = REPO_ROOT / ".local"
#: The environment variables of the Healthcare emulator's fault injection that ``up --fault`` may set.
FAULT_KEYS = ("HEALTHCARE_EMULATOR_FAULTS",)
NOT_UP = 3  # exit code: the stack is not up, or its files in the workdir are unusable


class UsageError(Exception):
    """A command line or stack file the command cannot use: one line naming it and the fix, exit 2 or ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _fault_env(items: list[str]) -> dict[str, str]:
    """``--fault KEY=VALUE`` options as environment, each checked (a fault JSON that the emulator would refuse)."""
    from emulator.faults import FaultConfig

    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in FAULT_KEYS:
            raise UsageError(f"--fault {item!r}: give {' or '.join(FAULT_KEYS)}=JSON, e.g. HEALTHCARE_EMULATOR_FAULTS="
                             "'{\"methods\": {\"*\": {\"rate503\": 0.1}}}' (docs/emulator.md)")
        try:
            FaultConfig.parse(json.loads(value))
        except ValueError as exc:  # FaultSpecError is one
            raise UsageError(f"--fault {key}: not a fault configuration ({exc}): see docs/emulator.md") from None
        env[key] = value
    return env


def _up(args: argparse.Namespace) -> int:
    from .console import START_FAILURES, start_failed
    from .stack import Stack

    faults = _fault_env(args.fault)
    stack = Stack(args.workdir, config=args.config, source=args.source, faults=faults)
    try:
        env = stack.start()
    except START_FAILURES as exc:
        return start_failed("python -m localstack up", exc)
    print(f"local stack up in {stack.timings['start_s']:.1f} s; environment in {stack.env_path}")
    print(f"  {'service':<11} {'pid':>7}  {'url':<26} log")
    for service in stack.services.values():
        print(f"  {service.name:<11} {service.pid:>7}  {service.url:<26} {service.log_path}")
    print(f"  DICOM_STORE={env['DICOM_STORE']}")
    print(f"  DICOM: C-STORE to AE {env['GATEWAY_AE_TITLE']} at {env['GATEWAY_HOST']}:{env['GATEWAY_PORT']} "
          f"from AE {env['GATEWAY_CALLING_AE_TITLE']} (the gateway writes to gs://{env['INBOX_BUCKET']}/modalities/)")
    print(f"  upload to gs://{env['INBOX_BUCKET']}/ (STORAGE_EMULATOR_HOST={env['STORAGE_EMULATOR_HOST']}); "
          f"results on {env['RESULTS_SUBSCRIPTION']}")
    print(f"  gcloud on the stack: export CLOUDSDK_CONFIG={env['CLOUDSDK_CONFIG']} "
          "(or eval \"$(python -m localstack env)\")")
    print("  stop with: make down")
    return 0


def _records(workdir: Path) -> list[ProcessRecord]:
    return [record for path in sorted((workdir / "run").glob("*.pid")) if (record := read_record(path))]


@uninterrupted  # a Ctrl-C lets it finish (stack.env and stack.json removed too), then exits 130
def _down(args: argparse.Namespace) -> int:
    from .stack import stop_workdir

    records = _records(args.workdir)
    stopped = stop_workdir(args.workdir)
    for name, pids in stopped.items():
        print(f"stopped {name} (PIDs {', '.join(map(str, pids))})" if pids else f"{name} was not running")
    # Only what the stop would have signalled: a stale PID file's PID may now name an unrelated program.
    left = [(record.name, pid) for record in records for pid in session_of(record)]
    for name in ("stack.env", "stack.json"):
        (args.workdir / name).unlink(missing_ok=True)
    gcloud.remove_config(args.workdir)
    if left:
        print(f"still running after down: {left}", file=sys.stderr)
        return 1
    print("local stack down; no process left" if stopped else "local stack was not running")
    return 0


def _healthy(description: dict, record: ProcessRecord | None) -> bool:
    if record is None or not is_ours(record):
        return False
    path = description.get("health_path")
    url = description["url"].rstrip("/") + (path or "/")
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500 if path is None else 200 <= response.status < 300
    except urllib.error.HTTPError as exc:
        return path is None and exc.code < 500  # a function answers GET / with 4xx: it is up
    except OSError:
        return False


def _status(args: argparse.Namespace) -> int:
    state_path = args.workdir / "stack.json"
    if not state_path.exists():
        print("local stack is not up (start it with: make up)")
        return NOT_UP
    state = _stack_state(state_path)
    all_ok = True
    print(f"local stack started {state['started']} ({state_path})")
    for description in state["services"]:
        record = read_record(args.workdir / "run" / f"{description['name']}.pid")
        ok = _healthy(description, record)
        all_ok &= ok
        print(f"  {description['name']:<11} {'up' if ok else 'DOWN':<5} pid {description['pid']:<7} {description['url']:<26} {description['log']}")
    bridge = next((d for d in state["services"] if d["name"] == "bridge"), None)
    if bridge is not None:
        try:
            with urllib.request.urlopen(f"{bridge['url']}/status", timeout=2) as response:
                status = json.load(response)
            for name, route in status["routes"].items():
                print(f"  route {name:<9} delivered {route['delivered']}, failed attempts {route['failed_attempts']}, "
                      f"in flight {route['in_flight']}, waiting retry {route['waiting_retry']}, skipped {route['skipped']}"
                      + (f", dropped {route['dropped']}" if route.get("dropped") else ""))
            if status.get("events", {}).get("drop"):
                print(f"  events: losing {status['events']['drop']:.0%} of Cloud Storage notifications "
                      "(python -m localstack events deliver)")
        except OSError as exc:
            print(f"  bridge status unavailable: {exc}")
    return 0 if all_ok else 1


def _stack_state(path: Path) -> dict:
    """``stack.json`` as ``up`` wrote it; UsageError (exit 3) when it is not that."""
    restart = "restart the stack with make down && make up"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path} as JSON ({exc}): {restart}", NOT_UP) from None
    services = state.get("services") if isinstance(state, dict) else None
    if not (isinstance(state, dict) and isinstance(state.get("started"), str) and isinstance(services, list)
            and all(isinstance(service, dict) and {"name", "pid", "url", "log"} <= set(service)
                    for service in services)):
        raise UsageError(f"{path} does not describe the services up started: {restart}", NOT_UP)
    return state


def _env(args: argparse.Namespace) -> int:
    for key, value in _stack_env(args.workdir).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _stack_env(workdir: Path) -> dict[str, str]:
    """``stack.env`` of ``workdir``; UsageError (exit 3) when the stack is not up."""
    from .stack import read_env_file

    env_path = workdir / "stack.env"
    if not env_path.exists():
        raise UsageError("local stack is not up (start it with: make up)", NOT_UP)
    return read_env_file(env_path)


def _stack_url(args: argparse.Namespace, key: str) -> str:
    """``key`` of ``stack.env``: a service's URL; UsageError (exit 3) when the stack is not up or has no such key."""
    value = _stack_env(args.workdir).get(key)
    if not value:
        raise UsageError(f"{args.workdir / 'stack.env'} does not set {key} (written by an older or interrupted up, "
                         "or edited): restart the stack with make down && make up", NOT_UP)
    return value.rstrip("/")


def _call(method: str, url: str, body: object | None = None) -> int:
    """One admin call; prints the JSON answer; 0 when it succeeded."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        print(f"refused ({exc.code}): {exc.read().decode(errors='replace').strip()}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))  # outside the try: a closed stdout is not an unreachable service
    return 0


def _faults(args: argparse.Namespace) -> int:
    proxy = f"{_stack_url(args, 'STORAGE_EMULATOR_HOST')}/proxy"
    if args.action == "show":
        return _call("GET", f"{proxy}/faults") or _call("GET", f"{proxy}/outage") or _call("GET", f"{proxy}/config")
    if args.action == "clear":
        return _call("DELETE", f"{proxy}/faults") or _call("DELETE", f"{proxy}/outage")
    if args.action == "outage":
        return _call("PUT", f"{proxy}/outage", {"seconds": args.seconds})
    if args.action == "write-interval":
        return _call("PUT", f"{proxy}/config", {"writeIntervalSeconds": args.seconds})
    if args.json:
        try:
            spec = json.loads(args.json)
        except ValueError as exc:
            print(f"--json is not JSON ({exc}): pass the proxy's fault configuration, see docs/local-stack.md",
                  file=sys.stderr)
            return 2
    else:
        entry = {key: value for key, value in (("rate429", args.rate429), ("rate503", args.rate503),
                                               ("latencySeconds", args.latency)) if value is not None}
        spec = {"seed": args.seed, "methods": {method: entry for method in (args.method or ["*"])}}
    return _call("PUT", f"{proxy}/faults", spec)


def _events(args: argparse.Namespace) -> int:
    bridge = _stack_url(args, "BRIDGE_URL")
    if args.action == "show":
        return _call("GET", f"{bridge}/events")
    fraction = args.fraction if args.action == "drop" else 0.0
    return _call("PUT", f"{bridge}/events", {"drop": fraction, "seed": args.seed})


def _fault_parsers(commands: argparse._SubParsersAction) -> None:
    faults = commands.add_parser("faults", help="inject Cloud Storage faults (through the proxy)")
    services = faults.add_subparsers(dest="service", required=True)
    gcs = services.add_parser("gcs", help="the Cloud Storage proxy in front of fake-gcs-server")
    actions = gcs.add_subparsers(dest="action", required=True)
    actions.add_parser("show", help="current faults, outage and write limit")
    actions.add_parser("clear", help="remove every fault and end any outage")
    outage = actions.add_parser("outage", help="answer every request 503 for SECONDS")
    outage.add_argument("seconds", type=float)
    interval = actions.add_parser("write-interval", help="seconds between two writes of one object name (0: off)")
    interval.add_argument("seconds", type=float)
    put = actions.add_parser("set", help="error rates and latency per method id (objects.get, objects.insert...)")
    put.add_argument("--rate429", type=float, help="fraction of calls answered 429")
    put.add_argument("--rate503", type=float, help="fraction of calls answered 503")
    put.add_argument("--latency", type=float, metavar="SECONDS", help="added to every call")
    put.add_argument("--method", action="append", metavar="ID", help="method id (repeatable; default: every method, *)")
    put.add_argument("--seed", type=int, help="random seed of the draws")
    put.add_argument("--json", metavar="SPEC", help="the whole configuration as JSON (the proxy's PUT /proxy/faults)")

    events = commands.add_parser("events", help="lose Cloud Storage notifications for good, or deliver them")
    modes = events.add_subparsers(dest="action", required=True)
    drop = modes.add_parser("drop", help="acknowledge notifications without delivering them (lost for good)")
    drop.add_argument("--fraction", type=float, default=1.0, help="fraction to lose (default 1: all)")
    drop.add_argument("--seed", type=int, help="random seed when the fraction is below 1")
    deliver = modes.add_parser("deliver", help="deliver every notification again")
    deliver.set_defaults(seed=None)
    modes.add_parser("show", help="the current mode")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(prog="python -m localstack", description="The local Google Cloud stand-ins.")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="state, logs and PID files (default .local)")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start everything in the background")
    up.add_argument("--config", type=Path, default=None, help="the function's config file (default config.yaml)")
    up.add_argument("--source", default="main.py", help="the functions' source file (default main.py)")
    up.add_argument("--fault", action="append", default=[], metavar="HEALTHCARE_EMULATOR_FAULTS=JSON",
                    help="the Healthcare emulator's fault configuration at start (docs/emulator.md)")
    commands.add_parser("down", help="stop everything up started")
    commands.add_parser("status", help="health of each service, bridge counters")
    commands.add_parser("env", help="print export lines for stack.env")
    _fault_parsers(commands)
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    commands_run = {"up": _up, "down": _down, "status": _status, "env": _env, "faults": _faults, "events": _events}
    try:
        code = commands_run[args.command](args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
        return code
    except UsageError as exc:
        print(f"python -m localstack {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:  # down and up's stops end first (localstack.interrupts)
        print(f"python -m localstack {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        from handlers.cli.errors import closed_stdout_exit

        code = closed_stdout_exit(sys.stdout)  # the reader of stdout stopped (`| head`)
        if code is None:
            raise
        return code

if __name__ == "__main__":
    sys.exit(main())
