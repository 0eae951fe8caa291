"""``python -m emulator --host 127.0.0.1 --port N``: serve the Cloud Healthcare API emulator.

Environment: ``STORAGE_EMULATOR_HOST`` (the fake-gcs-server that imports read
and exports write), ``HEALTHCARE_EMULATOR_FAULTS`` (fault JSON, see
emulator.faults). Logs are JSON lines on stderr; the first says where it listens.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from types import FrameType

from werkzeug.serving import WSGIRequestHandler, make_server

from emulator.app import create_app
from emulator.context import Emulator
from emulator.faults import FaultConfig, FaultSpecError
from emulator.logs import LogBook, capture_python_logs
from emulator.settings import STYLES, Settings, SettingsError


class _QuietHandler(WSGIRequestHandler):
    """Werkzeug's per-request text lines off: the app logs each request as JSON."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m emulator", description="Cloud Healthcare API emulator")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8790, help="port to listen on; 0 picks a free one (default 8790)")
    parser.add_argument(
        "--partial-failure",
        choices=STYLES,
        default="error",
        help="how an import/export with some failed instances ends (default: error)",
    )
    parser.add_argument(
        "--partial-failure-code",
        type=int,
        default=3,
        help="canonical error code of such an error (default 3, INVALID_ARGUMENT)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = LogBook()
    capture_python_logs(log)
    try:
        settings = Settings().updated({"partialFailure": args.partial_failure, "partialFailureCode": args.partial_failure_code})
        raw_faults = os.environ.get("HEALTHCARE_EMULATOR_FAULTS", "").strip()
        faults = FaultConfig.parse(json.loads(raw_faults)) if raw_faults else None
    except (SettingsError, FaultSpecError, ValueError) as exc:
        log.error(f"cannot start: {exc}", hint="fix --partial-failure-code or HEALTHCARE_EMULATOR_FAULTS (JSON)")
        return 2
    emulator = Emulator(faults=faults, settings=settings, log=log)
    server = make_server(args.host, args.port, create_app(emulator), threaded=True, request_handler=_QuietHandler)
    url = f"http://{args.host}:{server.server_port}"
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        log.warning("STORAGE_EMULATOR_HOST is not set: imports and exports will fail until it is")
    log.info(
        "listening",
        url=url,
        storageEmulatorHost=os.environ.get("STORAGE_EMULATOR_HOST"),
        faults=emulator.faults.config.to_json(),
        settings=settings.to_json(),
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
        log.info("stopped", url=url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
