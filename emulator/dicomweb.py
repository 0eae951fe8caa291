"""Enough DICOMweb to check results: QIDO-RS searches, WADO-RS retrieval and deletion of one instance.

QIDO answers the DICOM JSON model (``application/dicom+json``); no match gives
``200 []``. Match keys (keyword or 8-hex-digit tag) are those the Cloud
Healthcare API's conformance statement lists for the level searched
(:data:`MATCH_KEYS`); another is a 400 with the API's wording. UIDs match a
list (``a,b``); StudyDate also matches a range (``A-B``, ``-B``, ``A-``, PS3.4
C.2.2.2.5); other values match exactly, with ``*`` and ``?`` wildcards; an
empty value matches everything. A study matches when one of its instances does
(so ``ModalitiesInStudy=MR`` means "has an MR series"). ``includefield`` takes
any attribute but those the API refuses (:data:`UNSUPPORTED_FIELDS`). Results
are paged with ``limit`` and ``offset``; a page that leaves results behind
carries PS3.18's ``Warning: 299`` header.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from pydicom.datadict import dictionary_VR, tag_for_keyword

from emulator.dicom import DicomError, to_explicit_vr_little_endian
from emulator.dicomstore import DicomStore, Instance
from emulator.errors import FAILED_PRECONDITION, INVALID_ARGUMENT, ApiError, invalid, not_found

STUDY, SERIES, INSTANCE = "study", "series", "instance"
MAX_LIMIT = {STUDY: 5000, SERIES: 5000, INSTANCE: 50000}
MAX_OFFSET = 1_000_000
RESERVED = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
#: PS3.18's warning for a page that leaves matches behind (sent as ``Warning: 299 SERVICE: "..."``).
MORE_RESULTS = "There are additional results that can be requested"
#: PS3.18 8.3.4.2's warning for ``fuzzymatching=true`` from a service that matches literally.
FUZZY_NOT_SUPPORTED = "The fuzzymatching parameter is not supported. Only literal matching has been performed."

STUDY_FIELDS = (
    "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
    "StudyDescription",
)
SERIES_FIELDS = (
    "SpecificCharacterSet", "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "StudyInstanceUID",
)
INSTANCE_FIELDS = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
    "BitsAllocated", "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID",
)
# Computed by the store, not read from instances.
MODALITIES_IN_STUDY = "00080061"
STUDY_SERIES_COUNT = "00201206"
STUDY_INSTANCE_COUNT = "00201208"
SERIES_INSTANCE_COUNT = "00201209"
MODALITY = "00080060"

# The match keys the API supports at each level (its DICOM conformance statement, "Search transaction"): a series
# search also takes the study keys, an instance search the study and series keys. ModalitiesInStudy is not in
# that list: UNCONFIRMED, accepted (docs/emulator.md).
_STUDY_KEYS = ("StudyInstanceUID", "PatientName", "PatientID", "AccessionNumber", "ReferringPhysicianName",
               "StudyDate", "ModalitiesInStudy")
_SERIES_KEYS = _STUDY_KEYS + ("SeriesInstanceUID", "Modality")
MATCH_KEYS = {STUDY: _STUDY_KEYS, SERIES: _SERIES_KEYS, INSTANCE: _SERIES_KEYS + ("SOPInstanceUID",)}
#: The API's 400 for another key, per level: "StudyDescription is not a supported study level attribute" and
#: "SOPClassUID is not a supported instance or series level attribute" (on /instances) are seen from it.
_UNSUPPORTED_KEY = {STUDY: "study level", SERIES: "instance or series level", INSTANCE: "instance or series level"}
#: includefield attributes the API refuses with "unknown/unsupported QIDO attribute: ..." (seen from it).
UNSUPPORTED_FIELDS = ("AvailableTransferSyntaxUID",)


def tag_of(name: str) -> str | None:
    """``PatientID`` or ``00100020`` -> ``00100020``; None for anything else."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return name.upper()
    tag = tag_for_keyword(name)
    return None if tag is None else f"{tag:08X}"


def _tags(keywords: Iterable[str]) -> list[str]:
    return [f"{tag_for_keyword(k):08X}" for k in keywords]


def match_tag(level: str, key: str) -> str:
    """The tag of match key ``key`` at ``level``; 400 in the API's words when the API does not support it there."""
    tag = tag_of(key)
    if tag is None or tag not in _tags(MATCH_KEYS[level]):
        raise invalid(f"{key} is not a supported {_UNSUPPORTED_KEY[level]} attribute (match keys at {level} level: "
                      f"{', '.join(MATCH_KEYS[level])})")
    return tag


def include_tag(field: str) -> str:
    """The tag of includefield ``field``; 400 in the API's words for one it refuses."""
    tag = tag_of(field)
    if tag is None or tag in _tags(UNSUPPORTED_FIELDS):
        raise invalid(f"unknown/unsupported QIDO attribute: {field}")
    return tag


def _values(instance: Instance, tag: str) -> list[str]:
    element = instance.attributes.get(tag)
    if not element:
        return []
    out = []
    for value in element.get("Value", []):
        if isinstance(value, Mapping):  # PN: {"Alphabetic": ...}
            value = value.get("Alphabetic", "")
        out.append(str(value))
    return out


_DATE = re.compile(r"\d{8}")


class _Range:
    """``A-B``, ``-B`` or ``A-`` on a date (VR DA, PS3.4 C.2.2.2.5): both ends included."""

    def __init__(self, keyword: str, raw: str) -> None:
        low, _, high = raw.partition("-")
        for bound in (low, high):
            if bound and not _DATE.fullmatch(bound):
                raise invalid(f"{keyword}={raw!r} is not a DA range: write A-B, -B or A- with values such as "
                              "20260101-20261231")
        if not low and not high:
            raise invalid(f"{keyword}={raw!r} has no bound: write A-B, -B or A-")
        if low and high and low > high:
            raise invalid(f"{keyword}={raw!r}: the range ends before it starts (write the earlier value first)")
        self.low, self.high = low or None, high or None

    def accepts(self, value: str) -> bool:
        value = value.strip()
        return (bool(_DATE.fullmatch(value)) and (self.low is None or value >= self.low)
                and (self.high is None or value <= self.high))


class _Match:
    """One QIDO match key."""

    def __init__(self, keyword: str, tag: str, raw: str) -> None:
        self.tag = MODALITY if tag == MODALITIES_IN_STUDY else tag
        self.universal = raw == ""
        vr = dictionary_VR(int(self.tag, 16))  # every match key is a dictionary attribute
        self.uids: set[str] | None = None
        self.range: _Range | None = None
        self.pattern: re.Pattern[str] | None = None
        if vr == "UI":
            self.uids = {u.strip() for u in re.split(r"[,\\]", raw) if u.strip()}
        elif vr == "DA" and "-" in raw:
            self.range = _Range(keyword, raw)
        else:
            self.pattern = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in raw), re.DOTALL)

    def accepts(self, instance: Instance) -> bool:
        if self.universal:
            return True
        values = _values(instance, self.tag)
        if self.uids is not None:
            return any(v in self.uids for v in values)
        if self.range is not None:
            return any(self.range.accepts(v) for v in values)
        assert self.pattern is not None
        return any(self.pattern.fullmatch(v) for v in values)


def _int_param(args: Mapping[str, str], name: str) -> int | None:
    raw = args.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise invalid(f"{name} must be a non-negative integer, got {raw!r}") from None
    if value < 0:
        raise invalid(f"{name} must be a non-negative integer, got {raw!r}")
    return value


@dataclass(frozen=True)
class Page:
    """One page of QIDO results, and PS3.18's ``Warning`` texts for it (matches left behind, fuzzy matching)."""

    results: list[dict[str, Any]]
    warnings: tuple[str, ...]


def search(
    store: DicomStore,
    level: str,
    args: Iterable[tuple[str, str]],
    *,
    study: str | None = None,
    series: str | None = None,
) -> Page:
    """QIDO-RS at ``level`` (study, series or instance), within ``study``/``series`` when given.

    ``limit`` is clamped to the level's maximum, which is also the page size when it is absent;
    ``offset`` above :data:`MAX_OFFSET` is a 400.
    """
    matches: list[_Match] = []
    include: list[str] = []
    include_all = False
    params: dict[str, str] = {}
    for key, value in args:
        if key == "includefield":
            for field in (f.strip() for f in value.split(",") if f.strip()):
                if field == "all":
                    include_all = True
                else:
                    include.append(include_tag(field))
        elif key in RESERVED:
            params[key] = value
        else:
            matches.append(_Match(key, match_tag(level, key), value))
    requested = _int_param(params, "limit")
    limit = MAX_LIMIT[level] if requested is None else min(requested, MAX_LIMIT[level])
    offset = _int_param(params, "offset") or 0
    if offset > MAX_OFFSET:
        raise invalid(f"offset must be at most {MAX_OFFSET:,}, got {offset}: narrow the search instead")

    everything = store.instances()
    scope = [i for i in everything if (study is None or i.study == study) and (series is None or i.series == series)]
    hits = [i for i in scope if all(m.accepts(i) for m in matches)]

    if level == STUDY:
        fields = _tags(STUDY_FIELDS)
        key_of = lambda i: i.study  # noqa: E731
    elif level == SERIES:
        fields = _tags(SERIES_FIELDS + (STUDY_FIELDS if study is None else ()))
        key_of = lambda i: (i.study, i.series)  # noqa: E731
    else:
        extra = (STUDY_FIELDS if study is None else ()) + (SERIES_FIELDS if series is None else ())
        fields = _tags(INSTANCE_FIELDS + extra)
        key_of = lambda i: i.key  # noqa: E731

    groups: dict[Any, Instance] = {}
    for instance in hits:
        groups.setdefault(key_of(instance), instance)
    matched = list(groups.items())
    chosen = matched[offset:offset + limit]
    wanted = list(dict.fromkeys(fields + include))
    results = [_result(level, key, first, everything, wanted, include_all) for key, first in chosen]
    warnings = ((MORE_RESULTS,) if offset + len(chosen) < len(matched) else ()) + (
        (FUZZY_NOT_SUPPORTED,) if params.get("fuzzymatching", "").lower() == "true" else ())
    return Page(results, warnings)


def _result(
    level: str, key: Any, first: Instance, everything: list[Instance], wanted: list[str], include_all: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    source = first.attributes
    for tag in (source if include_all else wanted):
        if tag in source:
            out[tag] = source[tag]
    if level == STUDY:
        members = [i for i in everything if i.study == key]
        modalities = sorted({v for i in members for v in _values(i, MODALITY)})
        if modalities:
            out[MODALITIES_IN_STUDY] = {"vr": "CS", "Value": modalities}
        out[STUDY_SERIES_COUNT] = {"vr": "IS", "Value": [len({i.series for i in members})]}
        out[STUDY_INSTANCE_COUNT] = {"vr": "IS", "Value": [len(members)]}
    elif level == SERIES:
        members = [i for i in everything if (i.study, i.series) == key]
        out[SERIES_INSTANCE_COUNT] = {"vr": "IS", "Value": [len(members)]}
    return dict(sorted(out.items()))


# WADO-RS
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _media_ranges(accept: str) -> list[tuple[str, dict[str, str]]]:
    ranges = []
    for part in accept.split(","):
        pieces = [p.strip() for p in part.split(";") if p.strip()]
        if not pieces:
            continue
        params = {}
        for piece in pieces[1:]:
            key, _, value = piece.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        ranges.append((pieces[0].lower(), params))
    return ranges


def negotiate(accept: str) -> tuple[bool, str]:
    """(multipart?, transfer syntax: '*' or explicit VR LE) for an Accept header; 406 if unsupported."""
    if not accept.strip():
        return True, EXPLICIT_LE
    for media, params in _media_ranges(accept):
        syntax = params.get("transfer-syntax", EXPLICIT_LE)
        if syntax not in ("*", EXPLICIT_LE):
            continue
        if media == "application/dicom":
            return False, syntax
        if media == "multipart/related" and params.get("type", "application/dicom").lower() == "application/dicom":
            return True, syntax
        if media in ("*/*", "multipart/*"):
            return True, syntax
    raise not_acceptable(accept, single_part=True)


def not_acceptable(accept: str, *, single_part: bool) -> ApiError:
    """406, as the API answers an Accept header it cannot satisfy, with its wording and the emulator's choices."""
    choices = ['multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
               'multipart/related; type="application/dicom"; transfer-syntax=*']
    if single_part:
        choices += ["application/dicom; transfer-syntax=1.2.840.10008.1.2.1", "application/dicom; transfer-syntax=*"]
    return ApiError(
        INVALID_ARGUMENT,
        f"no supported media type found in [{accept}], accept-header must include one of {', '.join(choices)} "
        "(the emulator transcodes to explicit VR little endian only)",
        http=406,
    )


def retrieve(store: DicomStore, study: str, series: str, sop: str, accept: str) -> tuple[bytes, str]:
    """WADO-RS RetrieveInstance: (body, Content-Type)."""
    instance = store.get(study, series, sop)
    if instance is None:
        raise not_found(f"instance /studies/{study}/series/{series}/instances/{sop} not found in {store.name}")
    multipart, syntax = negotiate(accept)
    data, part_type = _encoded(instance, syntax)
    if not multipart:
        return data, part_type
    return _multipart([(data, part_type)])


def retrieve_many(store: DicomStore, study: str, series: str | None, accept: str) -> tuple[bytes, str]:
    """WADO-RS RetrieveStudy / RetrieveSeries: every instance, one part each, in store order."""
    members = _members(store, study, series)
    multipart, syntax = negotiate(accept)
    if not multipart:  # single-part application/dicom is for one instance (RetrieveInstance) only
        raise not_acceptable(accept, single_part=False)
    return _multipart([_encoded(instance, syntax) for instance in members])


def metadata(store: DicomStore, study: str, series: str | None = None, sop: str | None = None) -> list[dict[str, Any]]:
    """WADO-RS RetrieveMetadata: each instance's attributes in the DICOM JSON model (bulk data left out)."""
    if sop is not None and series is not None:
        instance = store.get(study, series, sop)
        if instance is None:
            raise not_found(f"instance /studies/{study}/series/{series}/instances/{sop} not found in {store.name}")
        return [instance.attributes]
    return [instance.attributes for instance in _members(store, study, series)]


def _members(store: DicomStore, study: str, series: str | None) -> list[Instance]:
    members = [i for i in store.instances() if i.study == study and (series is None or i.series == series)]
    if not members:
        path = f"/studies/{study}" + (f"/series/{series}" if series else "")
        raise not_found(f"{path} not found in {store.name}")
    return members


def _encoded(instance: Instance, syntax: str) -> tuple[bytes, str]:
    """The instance's bytes in ``syntax`` ('*': as stored) and its part's Content-Type."""
    if syntax == "*":
        data, actual = instance.data, instance.transfer_syntax
    else:
        try:
            data, actual = to_explicit_vr_little_endian(instance), EXPLICIT_LE
        except DicomError as exc:
            raise ApiError(FAILED_PRECONDITION, str(exc)) from None
    return data, f"application/dicom; transfer-syntax={actual}"


def delete(store: DicomStore, study: str, series: str, sop: str) -> None:
    """DeleteInstance: the instance is gone at once (QIDO, WADO, export); 404 when it is not stored.

    The API answers ``Empty`` (``{}``). Deleting a study or series is a
    long-running operation in the API; the emulator does not implement it.
    """
    if store.delete(study, series, sop) is None:
        raise not_found(f"instance /studies/{study}/series/{series}/instances/{sop} not found in {store.name}")


def _multipart(parts: list[tuple[bytes, str]]) -> tuple[bytes, str]:
    boundary = secrets.token_hex(16)
    body = b"".join(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data + b"\r\n" for data, part_type in parts)
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'
