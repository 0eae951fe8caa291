"""Admin endpoints under ``/emulator/``: health, faults, settings, logs, stats, reset.

These are the emulator's own; they are never counted in stats nor subject to faults.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, Response, current_app, request

from emulator.api import json_response, read_body
from emulator.context import Emulator
from emulator.errors import invalid, not_found
from emulator.faults import FaultConfig, FaultSpecError
from emulator.settings import SettingsError

admin = Blueprint("admin", __name__, url_prefix="/emulator")


def _emulator() -> Emulator:
    return current_app.config["EMULATOR"]


def _json_body() -> Any:
    raw = read_body(request)
    body = request.get_json(force=True, silent=True)  # curl -d sends a form content type
    if body is None and raw.strip():
        raise invalid("the body must be JSON")
    return body


@admin.get("/health")
def health() -> Response:
    return json_response({"status": "ok", "storageEmulatorHost": os.environ.get("STORAGE_EMULATOR_HOST") or None})


@admin.get("/faults")
def get_faults() -> Response:
    return json_response(_emulator().faults.config.to_json())


@admin.put("/faults")
def put_faults() -> Response:
    emulator = _emulator()
    try:
        config = FaultConfig.parse(_json_body())
    except FaultSpecError as exc:
        raise invalid(f"fault configuration refused: {exc}") from None
    emulator.faults.set(config)
    emulator.log.info("faults set", faults=config.to_json())
    return json_response(config.to_json())


@admin.delete("/faults")
def delete_faults() -> Response:
    emulator = _emulator()
    emulator.faults.clear()
    emulator.log.info("faults cleared")
    return json_response(emulator.faults.config.to_json())


@admin.get("/config")
def get_config() -> Response:
    return json_response(_emulator().settings.get().to_json())


@admin.put("/config")
def put_config() -> Response:
    emulator = _emulator()
    try:
        settings = emulator.settings.update(_json_body() or {})
    except SettingsError as exc:
        raise invalid(f"settings refused: {exc}") from None
    emulator.log.info("settings changed", settings=settings.to_json())
    return json_response(settings.to_json())


@admin.get("/logs")
def logs() -> Response:
    """Kept log entries; ``?operation=ID`` (or the full operation name) for one operation's."""
    emulator = _emulator()
    wanted = request.args.get("operation")
    if wanted:
        op_id = wanted.rsplit("/", 1)[-1]
        if emulator.operations.by_id(op_id) is None:
            raise not_found(f"operation {wanted} is unknown to the emulator (reset, or never created)")
        return json_response({"entries": emulator.log.entries(op_id)})
    return json_response({"entries": emulator.log.entries()})


@admin.get("/stats")
def stats() -> Response:
    """Requests per method id; ``?view=full`` adds the injected errors per method and status."""
    emulator = _emulator()
    if request.args.get("view") == "full":
        return json_response({"requests": emulator.stats.requests(), "injectedErrors": emulator.stats.injected_errors()})
    return json_response(emulator.stats.requests())


@admin.post("/reset")
def reset() -> Response:
    """Drop all data and stats; ``?all=true`` also restores the startup faults and settings."""
    emulator = _emulator()
    everything = request.args.get("all", "").lower() in ("1", "true", "yes")
    emulator.reset(everything=everything)
    emulator.log.info("emulator reset", everything=everything)
    return json_response({})
