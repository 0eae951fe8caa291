"""A DICOM store's instances, in memory, keyed by Study/Series/SOP Instance UIDs."""

from __future__ import annotations

import enum
import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass(frozen=True)
class Instance:
    """One stored instance: its bytes as received and its searchable attributes."""

    study: str
    series: str
    sop: str
    data: bytes = field(repr=False)
    transfer_syntax: str
    attributes: dict[str, Any] = field(repr=False, compare=False)  # DICOM JSON model, non-bulk elements
    sha256: str = field(default="", compare=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.study, self.series, self.sop)

    @property
    def path(self) -> str:
        return f"/studies/{self.study}/series/{self.series}/instances/{self.sop}"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class AddResult(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # same UIDs, same bytes: the new copy is ignored
    CONFLICT = "conflict"  # same UIDs, different bytes: refused (checksum mismatch)


class DicomStore:
    """A DICOM store resource and its instances (thread-safe)."""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.config = config  # the DicomStore fields given at creation (labels, notificationConfig...)
        self._lock = threading.Lock()
        self._instances: dict[tuple[str, str, str], Instance] = {}

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **self.config}

    def add(self, instance: Instance) -> AddResult:
        """Store ``instance`` unless its UIDs are taken (duplicates are ignored, never overwritten)."""
        with self._lock:
            existing = self._instances.get(instance.key)
            if existing is None:
                self._instances[instance.key] = instance
                return AddResult.STORED
            return AddResult.DUPLICATE if existing.sha256 == instance.sha256 else AddResult.CONFLICT

    def delete(self, study: str, series: str, sop: str) -> Instance | None:
        """Remove one instance; the removed instance, or None when it was not stored."""
        with self._lock:
            return self._instances.pop((study, series, sop), None)

    def get(self, study: str, series: str, sop: str) -> Instance | None:
        with self._lock:
            return self._instances.get((study, series, sop))

    def instances(self) -> list[Instance]:
        """All instances, in the order they were stored."""
        with self._lock:
            return list(self._instances.values())

    def metrics(self) -> dict[str, Any]:
        """``DicomStoreMetrics``: counts and sizes, int64 as strings, zeros left out as proto3 JSON does.

        Blob bytes are the instances' bytes as stored; structured bytes are those of their
        searchable attributes as DICOM JSON (the real API's measure is not documented).
        """
        everything = self.instances()
        figures = {
            "studyCount": len({i.study for i in everything}),
            "seriesCount": len({(i.study, i.series) for i in everything}),
            "instanceCount": len(everything),
            "blobStorageSizeBytes": sum(len(i.data) for i in everything),
            "structuredStorageSizeBytes": sum(len(json.dumps(i.attributes)) for i in everything),
        }
        return {"name": self.name, **{key: str(value) for key, value in figures.items() if value}}

    def select(self, paths: Iterable[tuple[str, str | None, str | None]]) -> tuple[list[Instance], list[int]]:
        """Instances named by filter paths (study[, series[, sop]]), in store order, each once.

        Also returns the indexes of the paths that named nothing.
        """
        everything = self.instances()
        studies = {i.study for i in everything}
        series_keys = {(i.study, i.series) for i in everything}
        instance_keys = {i.key for i in everything}
        want_studies: set[str] = set()
        want_series: set[tuple[str, str]] = set()
        want_instances: set[tuple[str, str, str]] = set()
        unmatched: list[int] = []
        for index, (study, series, sop) in enumerate(paths):
            if series is None:
                found = study in studies
                want_studies.add(study)
            elif sop is None:
                found = (study, series) in series_keys
                want_series.add((study, series))
            else:
                found = (study, series, sop) in instance_keys
                want_instances.add((study, series, sop))
            if not found:
                unmatched.append(index)
        chosen = [
            i
            for i in everything
            if i.study in want_studies or (i.study, i.series) in want_series or i.key in want_instances
        ]
        return chosen, unmatched
