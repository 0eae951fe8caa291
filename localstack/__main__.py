"""``python -m localstack up|down|status|env``: the local stack from the command line (``make up``...).

* ``up``: stop whatever a previous ``up`` left, start every service in the
  background on free ports, write ``.local/stack.env`` and the gcloud
  configuration ``.local/gcloud`` (``CLOUDSDK_CONFIG``), print a summary;
* ``down``: stop every process ``up`` started, by PID, and check none is left;
* ``status``: each service's PID, port and health, and the bridge's counters
  (exit 0 if all are healthy, 1 if some are not, 3 if the stack is not up);
* ``env``: ``export KEY=VALUE`` lines for a shell, ``CLOUDSDK_CONFIG`` included, so that
  after ``eval "$(python -m localstack env)"`` the Google clients and ``gcloud`` use the stack.
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
from .names import REPO_ROOT
from .process import ProcessRecord, is_ours, read_record, session_members

DEFAULT_WORKDIR = REPO_ROOT / ".local"


def _up(args: argparse.Namespace) -> int:
    from .process import StartError
    from .stack import Stack

    faults = dict(item.split("=", 1) for item in args.fault)
    stack = Stack(args.workdir, config=args.config, source=args.source, faults=faults)
    try:
        env = stack.start()
    except (StartError, OSError, RuntimeError) as exc:
        print(f"localstack up failed: {exc}", file=sys.stderr)
        return 1
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


def _down(args: argparse.Namespace) -> int:
    from .stack import stop_workdir

    records = _records(args.workdir)
    stopped = stop_workdir(args.workdir)
    for name, pids in stopped.items():
        print(f"stopped {name} (PIDs {', '.join(map(str, pids))})" if pids else f"{name} was not running")
    left = [(record.name, pid) for record in records for pid in session_members(record.pid)]
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
        return 3
    state = json.loads(state_path.read_text())
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
                      f"in flight {route['in_flight']}, waiting retry {route['waiting_retry']}, skipped {route['skipped']}")
        except OSError as exc:
            print(f"  bridge status unavailable: {exc}")
    return 0 if all_ok else 1


def _env(args: argparse.Namespace) -> int:
    from .stack import read_env_file

    env_path = args.workdir / "stack.env"
    if not env_path.exists():
        print("local stack is not up (start it with: make up)", file=sys.stderr)
        return 3
    for key, value in read_env_file(env_path).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(prog="python -m localstack", description="The local Google Cloud stand-ins.")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="state, logs and PID files (default .local)")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start everything in the background")
    up.add_argument("--config", type=Path, default=None, help="the function's config file (default config.yaml)")
    up.add_argument("--source", default="main.py", help="the functions' source file (default main.py)")
    up.add_argument("--fault", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for the Healthcare emulator's fault injection (repeatable)")
    commands.add_parser("down", help="stop everything up started")
    commands.add_parser("status", help="health of each service, bridge counters")
    commands.add_parser("env", help="print export lines for stack.env")
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()
    return {"up": _up, "down": _down, "status": _status, "env": _env}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
