"""Export by query: QIDO-RS match parameters, searched page by page, become the paths of a filter file.

``ModalitiesInStudy=CT&StudyDate=20260101-20261231`` at study, series or instance level:
:meth:`Query.parse` checks it before any call (keys, date and time forms, no paging
parameters of its own); :func:`search_paths` then asks the store for every match with
``limit``/``offset`` until a page comes back empty, and refuses a search that matches
more than the config's ``exports.max_query_results``. A search stopped before its end
(:class:`SearchPaused`) carries what it found, so the next call resumes at that offset.

Match values can be patient data (``PatientName=DOE^JANE``): an error text quotes no value
but a malformed date or time of a key not naming the patient (``StudyDate='2026-01-01'``),
and results and logs show the query as :meth:`Query.shown` writes it, the values
of keys naming the patient (:func:`names_patient`) always hidden, every value hidden
with ``results.object_names: hashed``. Only the search's progress in the state bucket
keeps the query as written (a resumed search must ask the same).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qsl

from handlers.clients.healthcare import ApiError, HealthcareApi
from handlers.exports.paths import ExportRequestError, resource_path
from handlers.retry import Deadline, RetryLater

CAP_RULE = "exports.max_query_results"
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
#: level -> (QIDO resource, the UIDs of a result, the plural for messages)
LEVELS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "study": ("studies", (STUDY_UID,), "studies"),
    "series": ("series", (STUDY_UID, SERIES_UID), "series"),
    "instance": ("instances", (STUDY_UID, SERIES_UID, SOP_UID), "instances"),
}
#: ``on_page(found, pages, last)``: after each page of a search (``last``: the search is over).
OnPage = Callable[[int, int, bool], None]
#: The largest ``limit`` the Cloud Healthcare API accepts at each level: the default page size.
MAX_PAGE_SIZE = {"study": 5000, "series": 5000, "instance": 50000}
_SET_BY_US = ("limit", "offset", "includefield")
_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*|[0-9A-Fa-f]{8}")
HIDDEN = "…"
# Keys naming the patient: the Patient module's (group 0010: PatientName, PatientID, PatientBirthDate...) and
# AccessionNumber (00080050), as keywords or tags.
_PATIENT_KEY_RE = re.compile(r".*Patient.*|AccessionNumber|0010[0-9A-Fa-f]{4}|00080050")
# The value forms of dates, times and date-times (PS3.5 DA, TM, DT), alone or as a range A-B, -B, A-.
_FORMS = {
    "Date": (r"\d{8}", "YYYYMMDD", "20260101-20261231"),
    "Time": (r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", "HHMMSS", "080000-173000"),
    "DateTime": (r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?", "YYYYMMDDHHMMSS",
                 "20260101000000-20261231235959"),
}


@dataclass(frozen=True)
class Query:
    """QIDO-RS match parameters (as written) and the level whose UIDs they select."""

    where: str
    level: str = "study"
    params: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, where: Any, level: Any = "study") -> "Query":
        """Validate ``KEY=VALUE&KEY=VALUE``; ExportRequestError naming the part and the fix."""
        if not isinstance(level, str) or level not in LEVELS:
            raise ExportRequestError(f"query level {level!r} must be one of {', '.join(LEVELS)}")
        if not isinstance(where, str) or not where.strip().lstrip("?"):
            raise ExportRequestError("the query is empty: give QIDO-RS parameters such as "
                                     "ModalitiesInStudy=CT&StudyDate=20260101-20261231 (no query exports the whole store)")
        text = where.strip().lstrip("?")
        try:
            params = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ExportRequestError("the query is not KEY=VALUE&KEY=VALUE "
                                     "(e.g. ModalitiesInStudy=CT&StudyDate=20260101-20261231)") from None
        seen: set[str] = set()
        for key, value in params:
            _check(key, value, seen)
        if all(key == "fuzzymatching" for key, _ in params):
            raise ExportRequestError("the query has no match key: name an attribute such as StudyDate")
        return cls(text, level, tuple(params))

    @property
    def plural(self) -> str:
        return LEVELS[self.level][2]

    def shown(self, every_value: bool) -> str:
        """The match parameters for results and logs: hidden values (:data:`HIDDEN`) for the keys naming the
        patient, or for every key but ``fuzzymatching`` when ``every_value``."""
        def hidden(key: str, value: str) -> bool:
            return bool(value) and key != "fuzzymatching" and (every_value or names_patient(key))

        return "&".join(f"{key}={HIDDEN if hidden(key, value) else value}" for key, value in self.params)


def names_patient(key: str) -> bool:
    """Whether a match key's value names the patient (:data:`_PATIENT_KEY_RE`)."""
    return bool(_PATIENT_KEY_RE.fullmatch(key))


def _check(key: str, value: str, seen: set[str]) -> None:
    if key in _SET_BY_US:
        raise ExportRequestError(f"query parameter {key!r} is set by the exporter (it pages through every match "
                                 "and asks for the UIDs it needs): remove it")
    if not _KEY_RE.fullmatch(key):
        raise ExportRequestError(f"query key {key!r} is not a DICOM keyword or tag (e.g. StudyDate or 00080020)")
    if key in seen:
        raise ExportRequestError(f"query key {key!r} is given twice: QIDO-RS matches one value per attribute "
                                 "(list UIDs with commas, dates as a range A-B)")
    seen.add(key)
    if key == "fuzzymatching" and value not in ("true", "false"):
        raise ExportRequestError(f"fuzzymatching must be true or false, got {value!r}")
    for suffix in ("DateTime", "Date", "Time"):
        if key.endswith(suffix):
            form, shape, example = _FORMS[suffix]
            if value and not re.fullmatch(rf"({form})|({form})?-({form})?", value) or value == "-":
                raise ExportRequestError(f"{_quoted(key, value)} is not a {shape} value or range: write it as "
                                         f"{example}, -{example.split('-')[1]} or {example.split('-')[0]}-")
            low, dash, high = value.partition("-")
            if dash and low and high and len(low) == len(high) and low > high:
                raise ExportRequestError(f"{_quoted(key, value)}: the range ends before it starts (write the earlier "
                                         "value first)")
            return


def _quoted(key: str, value: str) -> str:
    """``KEY='VALUE'`` for an error text, or ``KEY`` alone when the value names the patient."""
    return key if names_patient(key) else f"{key}={value!r}"


def _path(item: dict[str, Any], level: str) -> str | None:
    """``/studies/S[/series/R[/instances/I]]`` of one QIDO result (None when a UID is missing)."""
    uids = []
    for tag in LEVELS[level][1]:
        values = (item.get(tag) or {}).get("Value") or []
        if not values or not isinstance(values[0], str):
            return None
        uids.append(values[0])
    return resource_path(*uids)


@dataclass(frozen=True)
class Found:
    """What a search found: the filter paths in store order, and how many pages it took."""

    paths: tuple[str, ...]
    pages: int


class SearchPaused(RetryLater):
    """The search stopped before its end (budget spent, API unavailable): ``found`` so far, to resume from."""

    def __init__(self, message: str, found: Found) -> None:
        super().__init__(message)
        self.found = found


def search_paths(api: HealthcareApi, store: str, query: Query, *, cap: int, deadline: Deadline,
                 page_size: int | None = None, on_page: OnPage | None = None, resume: Found | None = None,
                 every_value_hidden: bool = True, config_path: str = "config.yaml") -> Found:
    """Every match of ``query`` in ``store``, page by page (``on_page(found, pages, last)`` after each).

    Starts after ``resume`` (what an earlier call found: its paths, and the offset they make), if given.
    Stops at the first empty page (servers may return fewer than ``limit`` before the end), or
    at a page that adds nothing new (a server ignoring ``offset``). ExportRequestError when the
    API refuses the query or it matches more than ``cap``; SearchPaused when the budget ends or
    the API cannot answer yet. Their texts show the query as ``query.shown(every_value_hidden)``.
    """
    resource, uid_tags, plural = LEVELS[query.level]
    shown = query.shown(every_value_hidden)
    size = min(page_size or MAX_PAGE_SIZE[query.level], MAX_PAGE_SIZE[query.level])
    found: dict[str, None] = dict.fromkeys(resume.paths) if resume else {}
    pages = resume.pages if resume else 0
    while True:
        if deadline.expired:
            raise SearchPaused(f"searching {store} for {shown!r}: {len(found)} {plural} after {pages} pages; "
                               "the search resumes there on the next delivery", Found(tuple(found), pages))
        params = {**dict(query.params), "includefield": ",".join(uid_tags), "limit": str(size),
                  "offset": str(len(found))}
        try:
            page = api.search_dicom(store, resource, params, deadline)
        except ApiError as exc:
            if exc.retryable:
                raise SearchPaused(f"cannot search {store} yet: {exc}", Found(tuple(found), pages)) from None
            raise ExportRequestError(f"the Cloud Healthcare API refused the query {shown!r} on {store}: "
                                     f"{exc.message}: fix the query") from None
        pages += 1
        before = len(found)
        found.update((path, None) for path in (_path(item, query.level) for item in page) if path)
        if len(found) > cap:
            raise ExportRequestError(
                f"the query {shown!r} matches more than {cap:,} {plural} in {store}: narrow it (a shorter date "
                f"range, another attribute) or raise {CAP_RULE} in {config_path}", CAP_RULE)
        last = not page or len(found) == before
        if on_page is not None:
            on_page(len(found), pages, last)
        if last:
            return Found(tuple(found), pages)
