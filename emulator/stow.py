"""STOW-RS (``dicomStores.storeInstances``): DICOM Part 10 instances POSTed to ``.../dicomWeb/studies[/ST]``.

Request: ``multipart/related; type="application/dicom"; boundary=B`` (one
instance per part, as dicomweb-client and DICOMweb viewers send), or a single
``application/dicom`` body (the product's own curl and Python samples).
Each instance is stored as an import stores it: a new instance is stored, the
same UIDs with the same bytes are accepted and not stored again, the same UIDs
with other bytes fail ("checksum mismatch"); so does anything that is not
DICOM, lacks a UID, or (on ``.../studies/ST``) belongs to another study.

Answer: the Store Instances Response Module, ``200`` when every instance was
stored, ``202`` when some failed, ``409`` when none was; XML
(``application/dicom+xml``) unless the request accepts
``application/dicom+json``, as the real API answers clients that send no
Accept header. Failed instances carry FailureReason 272 (0x0110, processing
failure) and Google's private FailureDetail text, and no UIDs (as the one
failure body seen from the API): the detail names the instance when it was read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

from pydicom.datadict import keyword_for_tag
from werkzeug.http import parse_options_header

from emulator.dicom import DicomError, parse_instance
from emulator.dicomstore import AddResult, DicomStore
from emulator.errors import UNIMPLEMENTED, ApiError, invalid

RETRIEVE_URL = "00081190"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"
SOP_CLASS = "00080016"
PROCESSING_FAILURE = 0x0110
# Google's private FailureDetail (0009,xx97) in the block its creator "GOOGLE" reserves at (0009,0010).
PRIVATE_CREATOR, FAILURE_DETAIL = "00090010", "00091097"
GOOGLE = "GOOGLE"


@dataclass(frozen=True)
class StowAnswer:
    status: int
    body: bytes
    content_type: str
    stored: int  # instances stored or already there (identical)
    failures: tuple[str, ...]  # why each failed instance failed, for the log


@dataclass(frozen=True)
class _Outcome:
    """One part of the request: stored (or an identical duplicate) or failed, and what the response says of it."""

    stored: bool
    study: str | None
    sop_class: str | None = None  # stored instances only, as the answer names only those
    sop: str | None = None
    detail: str = ""
    retrieve_url: str = ""


def store_instances(
    store: DicomStore, body: bytes, content_type: str, accept: str, web_url: str, study: str | None = None
) -> StowAnswer:
    """Store the instances of a STOW-RS request into ``store``; ``web_url`` is the store's ``.../dicomWeb``."""
    outcomes = [_store_one(store, part, web_url, study) for part in parts_of(body, content_type)]
    stored = [o for o in outcomes if o.stored]
    failed = [o for o in outcomes if not o.stored]
    response: dict[str, Any] = {}
    studies = {study} if study else {o.study for o in outcomes if o.study}  # failed instances' too, as Google's 409
    if len(studies) == 1:
        response[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{web_url}/studies/{studies.pop()}"]}
    if failed:
        response[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [_failed_item(o) for o in failed]}
    if stored:
        response[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [_referenced_item(o) for o in stored]}
    status = 200 if not failed else 202 if stored else 409
    failures = tuple(o.detail for o in failed)
    if _wants_json(accept):
        return StowAnswer(status, json.dumps(_sorted(response)).encode(), "application/dicom+json", len(stored), failures)
    return StowAnswer(status, _xml(response), "application/dicom+xml", len(stored), failures)


def parts_of(body: bytes, content_type: str) -> list[bytes]:
    """The DICOM Part 10 payloads of the request (400 or 501 naming what is not accepted)."""
    media, params = parse_options_header(content_type)
    media = media.lower()
    if media == "application/dicom":
        if not body:
            raise invalid("the request body is empty: send one DICOM Part 10 instance")
        return [body]
    if media != "multipart/related":
        raise invalid(
            f"Content-Type {content_type!r} is not accepted for storing instances: use "
            "'multipart/related; type=\"application/dicom\"; boundary=...' or 'application/dicom'"
        )
    part_type = params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise ApiError(
            UNIMPLEMENTED,
            f"STOW-RS with type={part_type!r} (metadata and bulk data) is not implemented by the emulator; "
            "send DICOM Part 10 instances: multipart/related; type=\"application/dicom\"",
        )
    boundary = params.get("boundary")
    if not boundary:
        raise invalid("the multipart/related Content-Type has no boundary parameter")
    if not boundary.isascii():
        raise invalid(f"the multipart boundary {boundary!r} is not ASCII (RFC 2046 5.1.1): use ASCII characters only")
    parts = _split_multipart(body, boundary.encode("ascii"))
    if not parts:
        raise invalid("the multipart body has no part: send one DICOM instance per part")
    return parts


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """The contents of a multipart body's parts (RFC 2046: the CRLF before a delimiter belongs to it)."""
    pieces = (b"\r\n" + body).split(b"\r\n--" + boundary)
    if len(pieces) < 2:
        raise invalid("the multipart body does not contain its boundary: check the Content-Type's boundary")
    contents = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            return contents
        line_end = piece.find(b"\r\n")  # the rest of the delimiter line (transport padding)
        if line_end < 0:
            break
        rest = piece[line_end + 2 :]
        if rest.startswith(b"\r\n"):  # a part without headers
            contents.append(rest[2:])
            continue
        headers_end = rest.find(b"\r\n\r\n")
        if headers_end < 0:
            break
        contents.append(rest[headers_end + 4 :])
    raise invalid("the multipart body is truncated: a part lacks its headers' end or the closing boundary is missing")


def _store_one(store: DicomStore, data: bytes, web_url: str, study: str | None) -> _Outcome:
    try:
        instance = parse_instance(data)
    except DicomError as exc:
        return _Outcome(False, None, detail=str(exc))
    if study is not None and instance.study != study:
        detail = f"instance {instance.path} is not in study {study}, the study of the request's URL"
        return _Outcome(False, instance.study, detail=detail)
    result = store.add(instance)
    if result is AddResult.CONFLICT:
        detail = (
            f"An instance already exists in this DICOM store with the same Study/Series/SOPInstance UID "
            f"({instance.path}), but the DICOM files differ (checksum mismatch)"
        )
        return _Outcome(False, instance.study, detail=detail)
    sop_class = _first_value(instance.attributes.get(SOP_CLASS))
    return _Outcome(True, instance.study, sop_class, instance.sop, retrieve_url=f"{web_url}{instance.path}")


def _first_value(element: dict[str, Any] | None) -> str | None:
    values = (element or {}).get("Value") or [None]
    return values[0]


def _uid_elements(outcome: _Outcome) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if outcome.sop_class:
        out[REFERENCED_SOP_CLASS] = {"vr": "UI", "Value": [outcome.sop_class]}
    if outcome.sop:
        out[REFERENCED_SOP_INSTANCE] = {"vr": "UI", "Value": [outcome.sop]}
    return out


def _referenced_item(outcome: _Outcome) -> dict[str, Any]:
    return _sorted({**_uid_elements(outcome), RETRIEVE_URL: {"vr": "UR", "Value": [outcome.retrieve_url]}})


def _failed_item(outcome: _Outcome) -> dict[str, Any]:
    """FailureReason and Google's FailureDetail only: the one body seen from the API (dcmjs issue #249) has no
    Referenced SOP Class/Instance UIDs in its failed item, though it knew the instance's study."""
    return _sorted(
        {
            FAILURE_REASON: {"vr": "US", "Value": [PROCESSING_FAILURE]},
            PRIVATE_CREATOR: {"vr": "LO", "Value": [GOOGLE]},
            FAILURE_DETAIL: {"vr": "LT", "Value": [outcome.detail]},
        }
    )


def _sorted(dataset: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(dataset.items()))


def _wants_json(accept: str) -> bool:
    media_types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(media_types & {"application/dicom+json", "application/json"})


def _xml(dataset: dict[str, Any]) -> bytes:
    """The response in the Native DICOM Model (PS3.19), as the real API writes it by default."""
    root = ElementTree.Element("NativeDicomModel")
    _xml_attributes(root, dataset)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="utf-8")


def _xml_attributes(parent: ElementTree.Element, dataset: dict[str, Any]) -> None:
    for tag, element in _sorted(dataset).items():
        if tag == PRIVATE_CREATOR:
            continue  # written as the privateCreator attribute of the private element
        if tag == FAILURE_DETAIL:
            attrib = {"tag": "00090097", "vr": element["vr"], "keyword": "FailureDetail", "privateCreator": GOOGLE}
        else:
            attrib = {"tag": tag, "vr": element["vr"], "keyword": keyword_for_tag(int(tag, 16))}
        node = ElementTree.SubElement(parent, "DicomAttribute", attrib)
        for number, value in enumerate(element.get("Value", []), start=1):
            if element["vr"] == "SQ":
                _xml_attributes(ElementTree.SubElement(node, "Item", {"number": str(number)}), value)
            else:
                ElementTree.SubElement(node, "Value", {"number": str(number)}).text = str(value)
