"""The Cloud Healthcare API surface: routes (with discovery method ids) and their handlers."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from flask import Request, Response
from werkzeug.exceptions import ClientDisconnected

from emulator import dicomweb, stow
from emulator.context import Emulator
from emulator.errors import UNIMPLEMENTED, ApiError, invalid, not_found
from emulator.exporter import start_export
from emulator.importer import start_import
from emulator.operations import Operation, api_method, type_url
from emulator.paging import page

VERSIONS = ("v1", "v1beta1")

# Google's system parameters (the discovery document's top-level "parameters"): every method takes them,
# and Google's discovery-based client sends alt=json on every call. They are never QIDO match keys.
SYSTEM_PARAMETERS = frozenset(
    {"$.xgafv", "access_token", "alt", "callback", "fields", "key", "oauth_token", "prettyPrint", "quotaUser",
     "uploadType", "upload_protocol"}
)

_SEG = r"[^/:]+"
_LOC = rf"projects/(?P<project>{_SEG})/locations/(?P<location>{_SEG})"
_DS = rf"{_LOC}/datasets/(?P<dataset>{_SEG})"
_ST = rf"{_DS}/dicomStores/(?P<store>{_SEG})"
_WEB = rf"{_ST}/dicomWeb"
_OP = rf"{_DS}/operations/(?P<operation>{_SEG})"
_UID = r"[^/]+"


@dataclass(frozen=True)
class Call:
    """One API request, routed."""

    emulator: Emulator
    version: str
    params: Mapping[str, str]
    request: Request

    @property
    def parent(self) -> str:
        return f"projects/{self.params['project']}/locations/{self.params['location']}"

    @property
    def dataset(self) -> str:
        return f"{self.parent}/datasets/{self.params['dataset']}"

    def body(self) -> dict[str, Any]:
        """The JSON body as a dict ({} when empty); snake_case field names accepted as proto3 JSON does."""
        raw = read_body(self.request)
        if not raw.strip():
            return {}
        try:
            text = raw.decode("utf-8")
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = json.loads(_single_quotes_to_double(text))
        except ValueError as exc:
            raise invalid(f"Invalid JSON payload received: {exc}") from None
        if not isinstance(parsed, dict):
            raise invalid("Invalid JSON payload received: the request body must be a JSON object")
        return _camel_keys(parsed)


def read_body(request: Request) -> bytes:
    """The request's body, kept for ``get_json``; 400 when it cannot be read whole.

    A broken chunked encoding (a bad chunk header, a chunk cut short) surfaces from the server as
    ``OSError``, a client gone mid-body as ``ClientDisconnected``: the request's fault, not the emulator's.
    """
    try:
        return request.get_data(cache=True)
    except (OSError, ClientDisconnected):
        raise invalid("the request body is malformed or incomplete (a broken chunked transfer encoding, or a "
                      "connection closed before the body's end): send the whole body again") from None


def _single_quotes_to_double(text: str) -> str:
    """JSON with 'single-quoted' strings (accepted by Google's API, used by the how-to's curl) as strict JSON."""
    out: list[str] = []
    index, length = 0, len(text)
    while index < length:
        char = text[index]
        if char in "\"'":
            end, chunk = index + 1, []
            while end < length and text[end] != char:
                if text[end] == "\\" and end + 1 < length:
                    chunk.append(text[end : end + 2])
                    end += 2
                else:
                    chunk.append(text[end])
                    end += 1
            body = "".join(chunk)
            if char == "'":
                body = re.sub(r'(?<!\\)"', r'\\"', body.replace("\\'", "'"))
            out.append(f'"{body}"')
            index = end + 1
        else:
            out.append(char)
            index += 1
    return "".join(out)


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _camel_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel(k): (v if k == "labels" else _camel_keys(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel_keys(v) for v in value]
    return value


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


# datasets
def create_dataset(call: Call) -> Response:
    emulator, version = call.emulator, call.version
    dataset = emulator.registry.create_dataset(call.parent, call.request.args.get("datasetId"), call.body())
    operation = emulator.operations.create(
        dataset.name, version, api_method(version, "dataset.DatasetService", "CreateDataset"), with_counter=False
    )
    operation.finish(response={"@type": type_url(version, "dataset.Dataset"), **dataset.to_json()})
    emulator.log.info("dataset created", dataset=dataset.name)
    return json_response(operation.to_json())


def list_datasets(call: Call) -> Response:
    items, token = page(call.emulator.registry.datasets(call.parent), f"datasets:{call.parent}",
                        call.request.args.get("pageSize"), call.request.args.get("pageToken"))
    return json_response(_listing("datasets", [d.to_json() for d in items], token))


def get_dataset(call: Call) -> Response:
    return json_response(call.emulator.registry.dataset(call.dataset).to_json())


def delete_dataset(call: Call) -> Response:
    call.emulator.registry.delete_dataset(call.dataset)
    call.emulator.operations.forget_dataset(call.dataset)
    call.emulator.log.info("dataset deleted", dataset=call.dataset)
    return json_response({})


def _listing(key: str, items: list[Any], token: str) -> dict[str, Any]:
    """A list response as proto3 JSON writes it: empty fields omitted."""
    out: dict[str, Any] = {}
    if items:
        out[key] = items
    if token:
        out["nextPageToken"] = token
    return out


# DICOM stores
def create_store(call: Call) -> Response:
    store = call.emulator.registry.create_store(call.dataset, call.request.args.get("dicomStoreId"), call.body())
    call.emulator.log.info("DICOM store created", store=store.name)
    return json_response(store.to_json())


def list_stores(call: Call) -> Response:
    items, token = page(call.emulator.registry.stores(call.dataset), f"dicomStores:{call.dataset}",
                        call.request.args.get("pageSize"), call.request.args.get("pageToken"))
    return json_response(_listing("dicomStores", [s.to_json() for s in items], token))


def get_store(call: Call) -> Response:
    return json_response(call.emulator.registry.store(call.dataset, call.params["store"]).to_json())


def get_store_metrics(call: Call) -> Response:
    return json_response(call.emulator.registry.store(call.dataset, call.params["store"]).metrics())


def delete_store(call: Call) -> Response:
    call.emulator.registry.delete_store(call.dataset, call.params["store"])
    call.emulator.log.info("DICOM store deleted", store=f"{call.dataset}/dicomStores/{call.params['store']}")
    return json_response({})


def import_dicom(call: Call) -> Response:
    store = call.emulator.registry.store(call.dataset, call.params["store"])
    operation = start_import(call.emulator, store, call.dataset, call.version, call.body())
    return json_response(operation.to_json())


def export_dicom(call: Call) -> Response:
    store = call.emulator.registry.store(call.dataset, call.params["store"])
    operation = start_export(call.emulator, store, call.dataset, call.version, call.body())
    return json_response(operation.to_json())


# operations
def _operation(call: Call) -> Operation:
    call.emulator.registry.dataset(call.dataset)
    name = f"{call.dataset}/operations/{call.params['operation']}"
    operation = call.emulator.operations.get(name)
    if operation is None:
        raise not_found(f"operation {name} not found")
    return operation


def get_operation(call: Call) -> Response:
    return json_response(_operation(call).to_json())


def list_operations(call: Call) -> Response:
    call.emulator.registry.dataset(call.dataset)
    # filter is accepted and ignored (documented): every operation of the dataset is listed.
    items, token = page(call.emulator.operations.in_dataset(call.dataset), f"operations:{call.dataset}",
                        call.request.args.get("pageSize"), call.request.args.get("pageToken"))
    return json_response(_listing("operations", [op.to_json() for op in items], token))


def cancel_operation(call: Call) -> Response:
    operation = _operation(call)
    if not operation.done:
        operation.request_cancel()
        call.emulator.log.info("operation cancel requested", operation=operation.id)
    return json_response({})


# DICOMweb
def _search(level: str) -> Callable[[Call], Response]:
    def handler(call: Call) -> Response:
        store = call.emulator.registry.store(call.dataset, call.params["store"])
        args = [(k, v) for k, v in call.request.args.items(multi=True) if k not in SYSTEM_PARAMETERS]
        found = dicomweb.search(
            store,
            level,
            args,
            study=call.params.get("study"),
            series=call.params.get("series"),
        )
        response = Response(json.dumps(found.results), mimetype="application/dicom+json")
        for warning in found.warnings:
            response.headers.add("Warning", f'299 {call.request.host}: "{warning}"')
        return response

    return handler


def retrieve_many(call: Call) -> Response:
    store = call.emulator.registry.store(call.dataset, call.params["store"])
    p = call.params
    body, content_type = dicomweb.retrieve_many(store, p["study"], p.get("series"), call.request.headers.get("Accept", ""))
    return Response(body, content_type=content_type)


def retrieve_metadata(call: Call) -> Response:
    store = call.emulator.registry.store(call.dataset, call.params["store"])
    p = call.params
    results = dicomweb.metadata(store, p["study"], p.get("series"), p.get("instance"))
    return Response(json.dumps(results), content_type="application/dicom+json")


def not_implemented(method_id: str) -> Callable[[Call], Response]:
    """A discovery method the emulator does not implement: 501 naming it (not a 404, which reads as "no such study")."""

    def handler(call: Call) -> Response:
        path = call.request.path.split("/", 2)[2]  # after /VERSION/
        served = [r for r in ROUTES if r not in _NOT_IMPLEMENTED and r.pattern.fullmatch(path)]
        takes = "; this path takes " + ", ".join(f"{r.http_method} ({r.method_id})" for r in served) if served else ""
        raise ApiError(
            UNIMPLEMENTED,
            f"{method_id} ({call.request.method} {call.request.path}) is not implemented by the Healthcare API "
            f"emulator{takes}; docs/emulator.md lists the methods it implements",
        )

    return handler


def retrieve_instance(call: Call) -> Response:
    store = call.emulator.registry.store(call.dataset, call.params["store"])
    p = call.params
    body, content_type = dicomweb.retrieve(store, p["study"], p["series"], p["instance"], call.request.headers.get("Accept", ""))
    return Response(body, content_type=content_type)


def delete_instance(call: Call) -> Response:
    store = call.emulator.registry.store(call.dataset, call.params["store"])
    p = call.params
    dicomweb.delete(store, p["study"], p["series"], p["instance"])
    call.emulator.log.info("instance deleted", store=store.name,
                           instance=f"/studies/{p['study']}/series/{p['series']}/instances/{p['instance']}")
    return json_response({})


def _own_root(request: Request) -> str:
    """The emulator's base URL, for the URLs it hands out (STOW-RS RetrieveURL).

    From the Host header when it names a port; otherwise from the listening socket: dicomweb-client sends
    ``Host: 127.0.0.1`` without the port, and URLs built from that would point at port 80.
    """
    host = request.host
    if ":" not in host.rsplit("]", 1)[-1]:
        name, port = request.environ["SERVER_NAME"], request.environ["SERVER_PORT"]
        host = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
    return f"{request.scheme}://{host}/"


def store_instances(call: Call) -> Response:
    store = call.emulator.registry.store(call.dataset, call.params["store"])
    request = call.request
    web_url = f"{_own_root(request)}{call.version}/{store.name}/dicomWeb"
    answer = stow.store_instances(
        store, read_body(request), request.headers.get("Content-Type", ""), request.headers.get("Accept", ""),
        web_url, study=call.params.get("study"),
    )
    call.emulator.log.info("instances stored (STOW-RS)", store=store.name, stored=answer.stored, failed=len(answer.failures))
    for failure in answer.failures:
        call.emulator.log.warning(f"STOW-RS: instance not stored: {failure}", store=store.name)
    return Response(answer.body, status=answer.status, content_type=answer.content_type)


@dataclass(frozen=True)
class Route:
    http_method: str
    pattern: re.Pattern[str]
    method_id: str  # the discovery id without "healthcare.projects.locations.datasets."
    handler: Callable[[Call], Response]


def _route(http_method: str, pattern: str, method_id: str, handler: Callable[[Call], Response]) -> Route:
    return Route(http_method, re.compile(pattern), method_id, handler)


# The discovery document's other methods on these resources: 501 naming the method,
# not a 404 that reads as "no such study". First, so that `:verb` paths never reach the routes below.
_NOT_IMPLEMENTED: tuple[Route, ...] = tuple(
    _route(http_method, pattern, method_id, not_implemented(method_id))
    for http_method, pattern, method_id in (
        ("PATCH", _DS, "datasets.patch"),
        ("POST", rf"{_DS}:deidentify", "datasets.deidentify"),
        ("GET", rf"{_DS}:getIamPolicy", "datasets.getIamPolicy"),
        ("POST", rf"{_DS}:setIamPolicy", "datasets.setIamPolicy"),
        ("POST", rf"{_DS}:testIamPermissions", "datasets.testIamPermissions"),
        ("PATCH", _ST, "dicomStores.patch"),
        ("POST", rf"{_ST}:deidentify", "dicomStores.deidentify"),
        ("GET", rf"{_ST}:getIamPolicy", "dicomStores.getIamPolicy"),
        ("POST", rf"{_ST}:setIamPolicy", "dicomStores.setIamPolicy"),
        ("POST", rf"{_ST}:testIamPermissions", "dicomStores.testIamPermissions"),
        ("POST", rf"{_ST}:setBlobStorageSettings", "dicomStores.setBlobStorageSettings"),
        ("DELETE", rf"{_WEB}/studies/{_UID}", "dicomStores.studies.delete"),  # long-running in the API
        ("DELETE", rf"{_WEB}/studies/{_UID}/series/{_UID}", "dicomStores.studies.series.delete"),
        ("GET", rf"{_WEB}/studies/{_SEG}:getStudyMetrics", "dicomStores.dicomWeb.studies.getStudyMetrics"),
        ("POST", rf"{_WEB}/studies/{_SEG}:setBlobStorageSettings", "dicomStores.dicomWeb.studies.setBlobStorageSettings"),
        ("GET", rf"{_WEB}/studies/{_UID}/series/{_SEG}:getSeriesMetrics",
         "dicomStores.dicomWeb.studies.series.getSeriesMetrics"),
        ("GET", rf"{_WEB}/studies/{_UID}/series/{_UID}/instances/{_SEG}:getStorageInfo",
         "dicomStores.dicomWeb.studies.series.instances.getStorageInfo"),
        ("GET", rf"{_WEB}/studies/{_UID}/series/{_UID}/instances/{_UID}/rendered",
         "dicomStores.studies.series.instances.retrieveRendered"),
        ("GET", rf"{_WEB}/studies/{_UID}/series/{_UID}/instances/{_UID}/frames/{_UID}",
         "dicomStores.studies.series.instances.frames.retrieveFrames"),
        ("GET", rf"{_WEB}/studies/{_UID}/series/{_UID}/instances/{_UID}/frames/{_UID}/rendered",
         "dicomStores.studies.series.instances.frames.retrieveRendered"),
        ("GET", rf"{_WEB}/studies/{_UID}/series/{_UID}/instances/{_UID}/bulkdata/{_UID}/{_UID}",
         "dicomStores.studies.series.instances.bulkdata.retrieveBulkdata"),
    )
)

ROUTES: tuple[Route, ...] = _NOT_IMPLEMENTED + (
    _route("POST", rf"{_LOC}/datasets", "datasets.create", create_dataset),
    _route("GET", rf"{_LOC}/datasets", "datasets.list", list_datasets),
    _route("GET", _DS, "datasets.get", get_dataset),
    _route("DELETE", _DS, "datasets.delete", delete_dataset),
    _route("POST", rf"{_DS}/dicomStores", "dicomStores.create", create_store),
    _route("GET", rf"{_DS}/dicomStores", "dicomStores.list", list_stores),
    _route("GET", _ST, "dicomStores.get", get_store),
    _route("GET", rf"{_ST}:getDICOMStoreMetrics", "dicomStores.getDICOMStoreMetrics", get_store_metrics),
    _route("DELETE", _ST, "dicomStores.delete", delete_store),
    _route("POST", rf"{_ST}:import", "dicomStores.import", import_dicom),
    _route("POST", rf"{_ST}:export", "dicomStores.export", export_dicom),
    _route("GET", rf"{_DS}/operations", "operations.list", list_operations),
    _route("GET", _OP, "operations.get", get_operation),
    _route("POST", rf"{_OP}:cancel", "operations.cancel", cancel_operation),
    _route("GET", rf"{_WEB}/studies", "dicomStores.searchForStudies", _search(dicomweb.STUDY)),
    _route("POST", rf"{_WEB}/studies", "dicomStores.storeInstances", store_instances),
    _route("POST", rf"{_WEB}/studies/(?P<study>{_UID})", "dicomStores.studies.storeInstances", store_instances),
    _route("GET", rf"{_WEB}/series", "dicomStores.searchForSeries", _search(dicomweb.SERIES)),
    _route("GET", rf"{_WEB}/instances", "dicomStores.searchForInstances", _search(dicomweb.INSTANCE)),
    _route("GET", rf"{_WEB}/studies/(?P<study>{_UID})/series", "dicomStores.studies.searchForSeries",
           _search(dicomweb.SERIES)),
    _route("GET", rf"{_WEB}/studies/(?P<study>{_UID})/instances", "dicomStores.studies.searchForInstances",
           _search(dicomweb.INSTANCE)),
    _route("GET", rf"{_WEB}/studies/(?P<study>{_UID})/series/(?P<series>{_UID})/instances",
           "dicomStores.studies.series.searchForInstances", _search(dicomweb.INSTANCE)),
    _route("GET", rf"{_WEB}/studies/(?P<study>{_UID})/series/(?P<series>{_UID})/instances/(?P<instance>{_UID})",
           "dicomStores.studies.series.instances.retrieveInstance", retrieve_instance),
    _route("DELETE", rf"{_WEB}/studies/(?P<study>{_UID})/series/(?P<series>{_UID})/instances/(?P<instance>{_UID})",
           "dicomStores.studies.series.instances.delete", delete_instance),
    _route("GET", rf"{_WEB}/studies/(?P<study>{_UID})", "dicomStores.studies.retrieveStudy", retrieve_many),
    _route("GET", rf"{_WEB}/studies/(?P<study>{_UID})/series/(?P<series>{_UID})",
           "dicomStores.studies.series.retrieveSeries", retrieve_many),
    _route("GET", rf"{_WEB}/studies/(?P<study>{_UID})/metadata", "dicomStores.studies.retrieveMetadata",
           retrieve_metadata),
    _route("GET", rf"{_WEB}/studies/(?P<study>{_UID})/series/(?P<series>{_UID})/metadata",
           "dicomStores.studies.series.retrieveMetadata", retrieve_metadata),
    _route("GET", rf"{_WEB}/studies/(?P<study>{_UID})/series/(?P<series>{_UID})/instances/(?P<instance>{_UID})/metadata",
           "dicomStores.studies.series.instances.retrieveMetadata", retrieve_metadata),
)


def match(http_method: str, path: str) -> tuple[Route | None, dict[str, str], list[Route]]:
    """The route for ``path`` (after ``/v1/``), its parameters, and the routes of other verbs on it."""
    others = []
    for route in ROUTES:
        found = route.pattern.fullmatch(path)
        if found is None:
            continue
        if route.http_method == http_method:
            return route, {k: v for k, v in found.groupdict().items() if v is not None}, []
        others.append(route)
    return None, {}, others
