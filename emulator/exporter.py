"""``dicomStores.export`` to Cloud Storage: formats, filter files, the object layout.

Each instance becomes ``{uriPrefix}/{study}/{series}/{instance}.{ext}``; frame by
frame (``.../{instance}/{frame}.{ext}``, 1-based) for multi-frame instances in
the image and raw-pixel formats. Existing objects are overwritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from emulator import jobs, png
from emulator.context import Emulator
from emulator.dicom import DicomError, raw_frames, rendered_frames, to_explicit_vr_little_endian
from emulator.dicomstore import DicomStore, Instance
from emulator.errors import FAILED_PRECONDITION, INVALID_ARGUMENT, NOT_FOUND, ApiError, invalid
from emulator.faults import MethodFaults
from emulator.operations import Operation, api_method
from handlers.wildcard import WildcardError, split_gcs_uri, validate_bucket

METHOD_ID = "dicomStores.export"


@dataclass(frozen=True)
class Format:
    """How instances are written for one ``mimeType``."""

    extension: str
    content_type: str
    render: Callable[[Instance], list[bytes]]  # one item, or one per frame


def _as_stored(instance: Instance) -> list[bytes]:
    return [instance.data]


def _explicit_le(instance: Instance) -> list[bytes]:
    return [to_explicit_vr_little_endian(instance)]


def _png(instance: Instance) -> list[bytes]:
    return [png.encode(frame) for frame in rendered_frames(instance)]


DICOM_AS_STORED = Format(".dcm", "application/dicom", _as_stored)
DICOM_EXPLICIT_LE = Format(".dcm", "application/dicom", _explicit_le)
FORMATS: dict[str, Format] = {
    "application/dicom; transfer-syntax=*": DICOM_AS_STORED,
    "application/dicom; transfer-syntax=1.2.840.10008.1.2.1": DICOM_EXPLICIT_LE,
    # Bare application/dicom means explicit VR little endian in DICOMweb.
    "application/dicom": DICOM_EXPLICIT_LE,
    "application/octet-stream; transfer-syntax=*": Format("", "application/octet-stream", raw_frames),
    "image/png": Format(".png", "image/png", _png),
}
DEFAULT_MIME_TYPE = "application/dicom; transfer-syntax=*"

_PATH_LINE = re.compile(r"/studies/([^/\s]+)(?:/series/([^/\s]+)(?:/instances/([^/\s]+))?)?")


def normalize_mime_type(mime_type: str) -> str:
    """Lowercase type, no spaces around ';' and '=', unquoted transfer syntax: comparable text."""
    parts = [p.strip() for p in mime_type.split(";") if p.strip()]
    if not parts:
        return ""
    params = []
    for param in parts[1:]:
        key, _, value = param.partition("=")
        params.append(f"{key.strip().lower()}={value.strip().strip(chr(34))}")
    return "; ".join([parts[0].lower(), *params])


@dataclass(frozen=True)
class ExportRequest:
    bucket: str
    prefix: str  # "" or ending in "/"
    format: Format
    filter_uri: tuple[str, str] | None  # (bucket, object) of the filter file


def parse_request(body: Mapping[str, Any]) -> ExportRequest:
    """A validated ``ExportDicomDataRequest`` (400 naming the problem)."""
    unknown = sorted(set(body) - {"gcsDestination", "bigqueryDestination", "filterConfig"})
    if unknown:
        raise invalid(
            f'Invalid JSON payload received. Unknown name "{unknown[0]}": use gcsDestination and filterConfig'
        )
    if "bigqueryDestination" in body:
        raise invalid(
            "bigqueryDestination is not supported by the emulator: export to Cloud Storage with gcsDestination",
            field="bigquery_destination",
        )
    destination = body.get("gcsDestination")
    if not isinstance(destination, Mapping) or not destination.get("uriPrefix"):
        raise invalid(
            'gcsDestination.uriPrefix is required, e.g. {"gcsDestination": {"uriPrefix": "gs://BUCKET/DIR"}}',
            field="gcs_destination.uri_prefix",
        )
    unknown = sorted(set(destination) - {"uriPrefix", "mimeType"})
    if unknown:
        raise invalid(f'Invalid JSON payload received. Unknown name "{unknown[0]}" in gcsDestination')
    uri = str(destination["uriPrefix"])
    if not uri.startswith("gs://"):
        raise invalid(f"gcsDestination.uriPrefix {uri!r} must start with gs://", field="gcs_destination.uri_prefix")
    bucket, _, prefix = uri[len("gs://"):].partition("/")
    try:
        validate_bucket(bucket, uri)
    except WildcardError as exc:
        raise invalid(str(exc), field="gcs_destination.uri_prefix") from None
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    mime_type = normalize_mime_type(str(destination.get("mimeType") or DEFAULT_MIME_TYPE))
    export_format = FORMATS.get(mime_type)
    if export_format is None:
        raise invalid(
            f"gcsDestination.mimeType {destination.get('mimeType')!r} is not supported by the emulator; "
            f"use one of: {', '.join(repr(m) for m in FORMATS)}",
            field="gcs_destination.mime_type",
        )
    return ExportRequest(bucket, prefix, export_format, _filter_uri(body.get("filterConfig")))


def _filter_uri(config: Any) -> tuple[str, str] | None:
    if config is None:
        return None
    if not isinstance(config, Mapping) or set(config) - {"resourcePathsGcsUri"}:
        raise invalid('filterConfig must be {"resourcePathsGcsUri": "gs://BUCKET/path/to/filter-file"}', field="filter_config")
    uri = config.get("resourcePathsGcsUri")
    if not uri:
        return None
    try:
        return split_gcs_uri(str(uri))
    except WildcardError as exc:
        raise invalid(f"filterConfig.resourcePathsGcsUri: {exc}", field="filter_config.resource_paths_gcs_uri") from None


def parse_filter(text: str, uri: str) -> list[tuple[str, str | None, str | None]]:
    """Resource paths of a filter file; lines split on \\n or \\r\\n, blank lines ignored.

    A malformed line raises INVALID_ARGUMENT naming its number and content.
    """
    paths: list[tuple[str, str | None, str | None]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r").strip()
        if not line:
            continue
        found = _PATH_LINE.fullmatch(line)
        if found is None:
            raise ApiError(
                INVALID_ARGUMENT,
                f"filter file {uri} line {number}: {line[:200]!r} is not a resource path; "
                "write /studies/STUDY_UID[/series/SERIES_UID[/instances/INSTANCE_UID]]",
            )
        study, series, sop = found.groups()
        paths.append((study, series, sop))
    return paths


def start_export(emulator: Emulator, store: DicomStore, dataset: str, version: str, body: Mapping[str, Any]) -> Operation:
    request = parse_request(body)
    operation = emulator.operations.create(
        dataset, version, api_method(version, "dicom.DicomService", "ExportDicomData"), with_counter=True
    )
    emulator.log.info(
        "export started", operation=operation.id, store=store.name, destination=f"gs://{request.bucket}/{request.prefix}"
    )
    jobs.start(
        emulator,
        operation,
        METHOD_ID,
        "export",
        "dicom.ExportDicomDataResponse",
        lambda op, pacer, faults: _export(emulator, store, request, op, pacer, faults),
    )
    return operation


def _export(emulator: Emulator, store: DicomStore, request: ExportRequest, operation: Operation, pacer: jobs.Pacer,
            faults: MethodFaults) -> None:
    gcs = emulator.gcs_factory()
    try:
        if not gcs.bucket_exists(request.bucket):
            raise ApiError(
                NOT_FOUND,
                f"Cloud Storage bucket gs://{request.bucket} does not exist (gcsDestination.uriPrefix): create it first",
            )
        instances = store.instances()
        if request.filter_uri is not None:
            bucket, name = request.filter_uri
            uri = f"gs://{bucket}/{name}"
            try:
                text = gcs.read(bucket, name).decode("utf-8")
            except ApiError as exc:
                raise ApiError(exc.code, f"cannot read filter file {uri}: {exc.message}") from None
            except UnicodeDecodeError:
                raise ApiError(INVALID_ARGUMENT, f"filter file {uri} is not UTF-8 text") from None
            paths = parse_filter(text, uri)
            instances, unmatched = store.select(paths)
            for index in unmatched:
                study, series, sop = paths[index]
                path = f"/studies/{study}" + (f"/series/{series}" if series else "") + (f"/instances/{sop}" if sop else "")
                emulator.log.warning(
                    f"filter path {path} names nothing in the store: skipped", operation=operation.id, filter=uri
                )
        operation.count(pending=len(instances))
        for index, instance in enumerate(instances):
            pacer.step(index, len(instances))
            base = f"{request.prefix}{instance.study}/{instance.series}/{instance.sop}"
            try:
                outputs = request.format.render(instance)
                names = [base + request.format.extension] if len(outputs) == 1 else [
                    f"{base}/{frame}{request.format.extension}" for frame in range(1, len(outputs) + 1)
                ]
                for name, data in zip(names, outputs):
                    gcs.write(request.bucket, name, data, request.format.content_type)
            except (DicomError, ApiError) as exc:
                operation.count(failure=1, pending=-1)
                reason = exc.message if isinstance(exc, ApiError) else str(exc)
                code = exc.code if isinstance(exc, ApiError) else FAILED_PRECONDITION
                jobs.file_failed(emulator, operation, faults, "export", store.name, f"{store.name}/dicomWeb{instance.path}",
                                 code, reason, instance=instance.path)
            else:
                operation.count(success=1, pending=-1)
    finally:
        gcs.close()
