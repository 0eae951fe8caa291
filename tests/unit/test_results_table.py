"""bigquery/results.schema.json: the table the BigQuery subscription of ``--results-table`` writes.

The subscription uses the table's schema (``--use-table-schema``) and does not drop
unknown fields: a result message with a field the table lacks is not written (it
is dead-lettered after a few attempts). So every field of every result schema in
``schemas/`` must have a column of a compatible type. When you add a field to a
result schema, this test names the column to add.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import pytest

from tests import google_sdk

REPO = Path(__file__).resolve().parents[2]
TABLE = json.loads((REPO / "bigquery" / "results.schema.json").read_text())
RESULT_SCHEMAS = sorted((REPO / "schemas").glob("dicom-*-result.v*.json"))
# --write-metadata adds these columns; Pub/Sub fills them, the message does not.
METADATA = {"subscription_name": {"STRING"}, "message_id": {"STRING"}, "publish_time": {"TIMESTAMP"},
            "attributes": {"STRING", "JSON"}}
COMPATIBLE = {"string": {"STRING"}, "integer": {"INTEGER", "INT64"}, "number": {"FLOAT", "FLOAT64", "NUMERIC"},
              "boolean": {"BOOLEAN", "BOOL"}}
TYPES = {"STRING", "BYTES", "INTEGER", "INT64", "FLOAT", "FLOAT64", "NUMERIC", "BIGNUMERIC", "BOOLEAN", "BOOL",
         "TIMESTAMP", "DATE", "TIME", "DATETIME", "GEOGRAPHY", "JSON", "RECORD", "STRUCT"}


def columns(fields: list[dict], prefix: str = "") -> Iterator[tuple[str, dict]]:
    for field in fields:
        path = f"{prefix}{field['name']}"
        yield path, field
        yield from columns(field.get("fields", []), f"{path}.")


COLUMNS = dict(columns(TABLE))


def schema_fields(node: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """(dotted path, JSON Schema node) of every property, into objects and arrays of objects."""
    for name, child in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        yield path, child
        inner = child.get("items", {}) if "array" in types_of(child) else child
        yield from schema_fields(inner, f"{path}.")


def types_of(node: dict) -> set[str]:
    if "const" in node or "enum" in node:
        values = [node["const"]] if "const" in node else node["enum"]
        return {{str: "string", int: "integer", float: "number", bool: "boolean"}[type(v)] for v in values}
    declared = node.get("type", [])
    return set([declared] if isinstance(declared, str) else declared)


def expected_column(node: dict) -> tuple[set[str], str]:
    """(BigQuery types that can hold it, mode) for a JSON Schema node."""
    kinds = types_of(node) - {"null"}
    if kinds == {"array"}:
        if not types_of(node.get("items", {})):
            return {"JSON"}, "NULLABLE"  # items of any shape: one JSON value
        items, _ = expected_column(node["items"])
        return items, "REPEATED"
    if kinds == {"object"}:
        return ({"RECORD", "STRUCT"} if node.get("properties") else {"JSON"}), "NULLABLE"
    assert len(kinds) == 1, f"a column cannot hold {sorted(kinds)}"
    (kind,) = kinds
    return COMPATIBLE[kind], "NULLABLE"


def all_result_fields() -> list[tuple[str, str, dict]]:
    return [(path.name, field, node) for path in RESULT_SCHEMAS
            for field, node in schema_fields(json.loads(path.read_text()))]


def test_the_result_schemas_are_the_ones_published():
    assert [p.name for p in RESULT_SCHEMAS] == ["dicom-export-result.v1.json", "dicom-import-result.v1.json",
                                                "dicom-reconcile-result.v1.json"]
    assert len(all_result_fields()) > 40


@pytest.mark.parametrize("schema,field,node", all_result_fields(),
                         ids=[f"{s.split('.')[0]}:{f}" for s, f, _ in all_result_fields()])
def test_every_result_field_has_a_column_of_a_compatible_type(schema, field, node):
    types, mode = expected_column(node)
    column = COLUMNS.get(field)
    suggestion = json.dumps({"name": field.rsplit(".", 1)[-1], "type": sorted(types)[0], "mode": mode})
    assert column is not None, (f"schemas/{schema}: field {field} has no column in bigquery/results.schema.json: "
                                f"add {suggestion} (under its parent RECORD), or the BigQuery subscription "
                                f"dead-letters every message that has it")
    assert column["type"] in types, f"{field}: column type {column['type']}, the schema says {sorted(types)}"
    assert column.get("mode", "NULLABLE") == mode, f"{field}: column mode {column.get('mode')}, expected {mode}"


def test_the_table_has_no_column_nobody_writes():
    written = {field for _, field, _ in all_result_fields()} | set(METADATA)
    assert set(COLUMNS) - written == set()


def test_metadata_columns_partitioning_and_clustering_columns():
    for name, types in METADATA.items():
        assert COLUMNS[name]["type"] in types and COLUMNS[name].get("mode", "NULLABLE") == "NULLABLE", name
    # deploy.sh: --time_partitioning_field=publish_time --clustering_fields=outcome,rule
    deploy = (REPO / "deploy.sh").read_text()
    partition = re.search(r"--time_partitioning_field=(\w+)", deploy).group(1)
    clustering = re.search(r"--clustering_fields=([\w,]+)", deploy).group(1).split(",")
    assert COLUMNS[partition]["type"] == "TIMESTAMP"
    assert all(COLUMNS[c]["type"] == "STRING" and c in [f["name"] for f in TABLE] for c in clustering)


def test_column_definitions_follow_bigquery_rules():
    def check(fields: list[dict], where: str) -> None:
        names = [f["name"].lower() for f in fields]
        assert len(names) == len(set(names)), f"{where}: duplicate column names (case-insensitive)"
        for field in fields:
            path = f"{where}{field['name']}"
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,299}", field["name"]), path
            assert field["type"] in TYPES and field.get("mode", "NULLABLE") in ("NULLABLE", "REQUIRED", "REPEATED"), path
            assert field.get("mode") != "REQUIRED", f"{path}: imports and exports differ, every column is optional"
            assert field.get("description"), f"{path}: describe the column"
            if field["type"] in ("RECORD", "STRUCT"):
                assert field.get("fields"), f"{path}: a RECORD needs fields"
                check(field["fields"], f"{path}.")
            else:
                assert "fields" not in field, path
    check(TABLE, "")


def test_every_column_is_a_tablefieldschema_the_bigquery_api_defines():
    documents = [(google_sdk.BIGQUERY_V2, "TableFieldSchema", field) for field in TABLE]
    documents.append((google_sdk.BIGQUERY_V2, "TableFieldSchema", {"name": "x", "typ": "STRING"}))
    *found, control = google_sdk.unrecognized_fields(documents)
    assert control == ["TableFieldSchema.typ"]
    assert not [f for f in found if f]

