"""``python -m gateway --config FILE``: run the DICOM receiver (docs/gateway.md); ``--check`` only validates."""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="DICOM C-STORE receiver that lands every instance in Cloud Storage.")
    parser.add_argument("--config", required=True, help="the gateway's YAML config (see gateway/example.yaml)")
    parser.add_argument("--check", action="store_true", help="validate the config, print a summary and exit")
    args = parser.parse_args(argv)

    from .config import ConfigError, EncryptedKey, load

    try:
        config = load(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: valid")
        print(f"  AE title {config.ae_title} on {config.address}:{config.port}{' (TLS)' if config.tls else ''}, "
              f"calling AE titles allowed: {', '.join(config.calling_ae_titles)}")
        print(f"  objects  gs://{config.bucket}/{config.prefix}{config.object_name}")
        print(f"  spool    {config.spool_directory} (at most {config.spool_max_bytes // 2**20} MiB)")
        if config.additional_sop_classes:
            print(f"  also receives SOP classes {', '.join(config.additional_sop_classes)}")
        if config.commitment:
            peers = ", ".join(f"{ae} at {host}:{port}" for ae, (host, port) in config.commitment.peers.items())
            print(f"  storage commitment reports to {peers} (waiting at most {config.commitment.wait_seconds:g} s)")
        return 0

    from handlers import log

    from .service import Gateway

    try:
        gateway = Gateway(config)  # reads the storage-commitment journal, binds the health port
    except OSError as exc:
        if exc.filename is not None:  # a file or directory: the journal in the spool directory
            fix = (f"check spool.directory {config.spool_directory}: the gateway's user must be able to create it "
                   f"and to read and write {exc.filename}")
        else:  # a socket
            fix = f"check health.address {config.health_address} and health.port {config.health_port}"
        log.error("gateway could not start", error=str(exc), fix=fix)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        gateway.start()
    except (OSError, EncryptedKey) as exc:  # a key encrypted since the config was read, too
        log.error("gateway could not start", error=str(exc),
                  fix=EncryptedKey.FIX if isinstance(exc, EncryptedKey) else
                  f"check dicom.address {config.address} and dicom.port {config.port}, the TLS files "
                  f"and the spool directory {config.spool_directory}")
        gateway.stop()
        return 1
    stop.wait()
    gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
