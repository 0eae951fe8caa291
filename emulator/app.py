"""The Flask application: API dispatch (stats, faults), admin blueprint, Google-format errors.

Besides the Healthcare API (``/v1/``, ``/v1beta1/``) it serves Cloud Logging's
``POST /v2/entries:list`` (method id ``entries.list``), so one emulator URL is
both ``HEALTHCARE_EMULATOR_HOST`` and ``LOGGING_EMULATOR_HOST``.
"""

from __future__ import annotations

import time
import traceback

from typing import Callable

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from emulator import api
from emulator.admin import admin
from emulator.context import Emulator
from emulator.errors import (
    CANONICAL,
    INTERNAL,
    RESOURCE_EXHAUSTED,
    UNAVAILABLE,
    UNIMPLEMENTED,
    ApiError,
    invalid,
    not_found,
)

_INJECTED = {
    429: (RESOURCE_EXHAUSTED, "Quota exceeded for quota metric 'Requests' (injected by the emulator: faults rate429)"),
    503: (UNAVAILABLE, "The service is currently unavailable (injected by the emulator: faults rate503)"),
}
_BY_HTTP = {http: code for code, (_, http) in sorted(CANONICAL.items(), reverse=True)}
LOGGING_LIST = "entries.list"


def _json_object() -> dict:
    """The request's JSON object body ({} when empty); 400 for anything else."""
    raw = api.read_body(request)
    if not raw.strip():
        return {}
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received: the request body must be a JSON object")
    return body


def create_app(emulator: Emulator) -> Flask:
    """A Flask app serving ``/v1/``, ``/v1beta1/`` and ``/emulator/`` for ``emulator``."""
    app = Flask("emulator")
    app.config["EMULATOR"] = emulator
    app.register_blueprint(admin)

    @app.route("/<version>/<path:path>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    def dispatch(version: str, path: str) -> Response:
        if version not in api.VERSIONS:
            raise not_found(f"unknown API version {version!r}: the emulator serves /v1/ and /v1beta1/")
        route, params, others = api.match("GET" if request.method == "HEAD" else request.method, path)
        if route is None:
            if others:
                ids = ", ".join(f"{r.http_method} ({r.method_id})" for r in others)
                raise ApiError(
                    UNIMPLEMENTED, f"{request.method} /{version}/{path} is not implemented by the emulator; this path takes {ids}"
                )
            raise not_found(f"no Cloud Healthcare API method at {request.method} /{version}/{path} in the emulator")
        return serve(route.method_id, lambda: route.handler(api.Call(emulator, version, params, request)))

    @app.post("/v2/entries:list")
    def list_log_entries() -> Response:
        return serve(LOGGING_LIST, lambda: api.json_response(emulator.cloud_logging.list(_json_object())))

    def serve(method_id: str, handler: Callable[[], Response]) -> Response:
        """Count the call, apply the method's faults (latency, injected 429/503), then answer."""
        g.method_id = method_id
        emulator.stats.request(method_id)
        faults = emulator.faults.for_method(method_id)
        if faults.latency_seconds:
            time.sleep(faults.latency_seconds)
        injected = emulator.faults.draw_error(method_id)
        if injected is not None:
            emulator.stats.injected(method_id, injected)
            code, message = _INJECTED[injected]
            raise ApiError(code, message)
        return handler()

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return api.json_response(exc.body(), exc.http_status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        if code == 405:
            error = ApiError(UNIMPLEMENTED, f"{request.method} {request.path} is not supported by the emulator")
        else:
            error = ApiError(_BY_HTTP.get(code, INTERNAL), f"{exc.name}: {exc.description}")
        return api.json_response(error.body(), error.http_status)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        emulator.log.error(
            f"unexpected error serving {request.method} {request.path}: {exc!r}",
            traceback=traceback.format_exc(),
        )
        error = ApiError(INTERNAL, f"unexpected emulator error ({exc.__class__.__name__}); see the emulator's log")
        return api.json_response(error.body(), error.http_status)

    @app.before_request
    def started() -> None:
        g.started = time.monotonic()

    @app.after_request
    def allow_browsers(response: Response) -> Response:
        return _with_cors(response)

    @app.after_request
    def log_request(response: Response) -> Response:
        emulator.log.info(
            "request",
            httpMethod=request.method,
            path=request.full_path.rstrip("?"),
            methodId=g.get("method_id"),
            status=response.status_code,
            latencyMs=round((time.monotonic() - g.get("started", time.monotonic())) * 1000, 1),
        )
        return response

    return app


def _with_cors(response: Response) -> Response:
    """CORS as Google's APIs answer it, so browser viewers (OHIF...) can talk to the emulator.

    Any origin is allowed (the real API authorizes by token, not by origin); a
    preflight ``OPTIONS`` gets the methods and the headers it asked for.
    """
    origin = request.headers.get("Origin")
    if not origin:
        return response
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = "Content-Type, Content-Length, Location, Warning"
    response.vary.add("Origin")
    if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
        response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST, PUT, PATCH, DELETE"
        asked = request.headers.get("Access-Control-Request-Headers")
        if asked:
            response.headers["Access-Control-Allow-Headers"] = asked
        response.headers["Access-Control-Max-Age"] = "3600"
    return response
