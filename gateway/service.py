"""The gateway assembled: spool recovery, uploaders, the DICOM receiver and the health endpoint."""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import Callable

from handlers import log

from .commitment import JOURNAL_NAME, Committer, Ledger
from .config import GatewayConfig
from .health import Health
from .inbox import GcsInbox, Inbox
from .scp import Receiver
from .spool import Record, Spool
from .uploader import Uploader

__all__ = ["Gateway"]


class Gateway:
    """``start()`` resumes the spool, then listens; ``stop()`` closes the port, then stops the uploaders.

    ``inbox_factory`` makes one :class:`~gateway.inbox.Inbox` per uploader thread or
    helper process (default: the configured bucket through google-cloud-storage); it
    must pickle when ``uploads.processes`` > 0.
    """

    def __init__(self, config: GatewayConfig, inbox_factory: Callable[[], Inbox] | None = None) -> None:
        self.config = config
        self.spool = Spool(config.spool_directory, max_bytes=config.spool_max_bytes, segment_bytes=config.segment_bytes)
        # Storage commitment, when configured: the ledger follows each instance from spool to bucket.
        self.ledger = Ledger(Path(config.spool_directory) / JOURNAL_NAME) if config.commitment else None
        self.uploader = Uploader(self.spool, inbox_factory or partial(GcsInbox, config.bucket), bucket=config.bucket,
                                 threads=config.upload_threads, processes=config.upload_processes,
                                 max_backoff=config.max_backoff_seconds, names=config.names,
                                 on_uploaded=self.ledger.uploaded if self.ledger else lambda record: None,
                                 on_superseded=self.ledger.superseded if self.ledger else lambda record: None)
        self.committer = Committer(config, self.ledger) if self.ledger else None
        self.receiver = Receiver(config, self.spool, self._spooled,
                                 self.committer.on_action if self.committer else None)
        self.health = Health(self.spool, address=config.health_address, port=config.health_port,
                             stuck_after=config.stuck_after_seconds, stats_every=config.stats_every_seconds,
                             listening=lambda: self.receiver.listening)
        self._stopped = threading.Event()

    def start(self) -> None:
        recovered = self.spool.recover()
        stats = self.spool.stats()
        log.info("spool resumed", directory=self.config.spool_directory, pending=stats.pending,
                 pendingBytes=stats.pending_bytes, segments=stats.segments)
        if self.ledger is not None:
            log.info("storage commitment journal read", uploaded=self.ledger.remembered(),
                     journal=str(self.ledger.journal))
        for record in recovered:
            self._spooled(record)
        self.uploader.start()
        self.receiver.start()
        self.health.start()
        log.info("gateway started", destination=f"gs://{self.config.bucket}/{self.config.prefix}",
                 healthPort=self.health.port, dicomPort=self.receiver.port)

    def _spooled(self, record: Record) -> None:
        """A durable record: noted for storage commitment, queued for upload."""
        if self.ledger is not None:
            self.ledger.spooled(record)
        self.uploader.submit(record)

    def stop(self) -> None:
        """Refuse new associations, stop uploading (the spool keeps what is left), close the spool."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.stop()  # first: its stats timer would report the closed DICOM port as a problem
        self.receiver.stop()
        if self.committer is not None:
            self.committer.stop()
        self.uploader.stop()
        if self.ledger is not None:
            self.ledger.close()
        self.spool.close()
        log.info("gateway stopped")
