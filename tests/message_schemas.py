"""Validation of result messages against the published JSON Schemas in ``schemas/``."""

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import jsonschema

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
FILES = {"dicom-import-result/v1": "dicom-import-result.v1.json", "dicom-export-result/v1": "dicom-export-result.v1.json",
         "dicom-reconcile-result/v1": "dicom-reconcile-result.v1.json"}


@lru_cache(maxsize=None)
def _validator(schema_id: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / FILES[schema_id]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate(message: Mapping[str, Any], attributes: Mapping[str, str] | None = None) -> None:
    """Raise jsonschema.ValidationError unless the message (and its attributes) follow the schema."""
    _validator(message["schema"]).validate(dict(message))
    if attributes is not None:
        assert attributes["schema"] == message["schema"]
        assert attributes["outcome"] == message["outcome"]
        if message["schema"] == "dicom-reconcile-result/v1":
            assert attributes["sweep"] == message["sweep"]
            assert attributes["admittedCount"] == str(message["totals"]["admitted"])
            return
        assert attributes["failureCount"] == str(message["counter"]["failure"])
        assert attributes["successCount"] == str(message["counter"]["success"])
